"""NULL RPC against a real ONC-RPC responder on loopback, and its misbehaving variants."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins.probes.nfs_rpc import null_rpc


def test_correct_null_reply_succeeds_with_both_phases(rpc_server: Callable[..., Any]) -> None:
    server = rpc_server("ok")
    outcome = null_rpc("127.0.0.1", server.port, 4, timeout=2.0, xid=0x01020304)
    assert outcome.success, outcome
    phases = dict(outcome.phases)
    assert set(phases) == {"connect", "rpc"}
    assert 0 < phases["connect"] < outcome.duration and 0 < phases["rpc"] < outcome.duration
    assert server.calls == [(0x01020304, 100003, 4)]


def test_ipv6_and_version_3(rpc_server: Callable[..., Any], listen: Callable[..., socket.socket]) -> None:
    server = rpc_server("ok", listener=listen("::1"), versions=(3,))
    assert null_rpc("::1", server.port, 3, timeout=2.0).success
    refused_v4 = null_rpc("::1", server.port, 4, timeout=2.0)
    assert (refused_v4.success, refused_v4.reason) == (False, "prog_mismatch")
    assert "3-3" in refused_v4.detail


def test_fragmented_reply_is_reassembled(rpc_server: Callable[..., Any]) -> None:
    server = rpc_server("fragmented")
    assert null_rpc("127.0.0.1", server.port, 4, timeout=2.0).success


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("bad_xid", "bad_xid"),
        ("prog_mismatch", "prog_mismatch"),
        ("garbage", "garbage"),
        ("denied", "denied"),
        ("close", "closed"),
        ("huge", "garbage"),
    ],
)
def test_wrong_replies_are_failures(rpc_server: Callable[..., Any], mode: str, reason: str) -> None:
    server = rpc_server(mode)
    outcome = null_rpc("127.0.0.1", server.port, 4, timeout=2.0)
    assert (outcome.success, outcome.reason) == (False, reason), outcome
    # The connection was made: connect is measured, the RPC phase is not.
    assert [p for p, _ in outcome.phases] == ["connect"]


def test_late_reply_is_a_timeout(rpc_server: Callable[..., Any]) -> None:
    server = rpc_server("late", delay=1.0)
    outcome = null_rpc("127.0.0.1", server.port, 4, timeout=0.3)
    assert (outcome.success, outcome.reason) == (False, "timeout")
    assert 0.3 <= outcome.duration < 0.9


def test_nothing_listening_is_refused(listen: Callable[..., socket.socket]) -> None:
    sock = listen()
    port = sock.getsockname()[1]
    sock.close()
    outcome = null_rpc("127.0.0.1", port, 4, timeout=1.0)
    assert (outcome.success, outcome.reason, outcome.phases) == (False, "refused", ())
