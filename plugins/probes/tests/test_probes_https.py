"""HTTPS and HTTP probes against real servers on loopback with a test CA."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins.probes.http_probe import http_get, tls_context


def test_right_name_succeeds_with_any_status(test_ca: Any, http_server: Callable[..., Any]) -> None:
    server = http_server(test_ca)
    outcome = http_get("127.0.0.1", server.port, "object.test", 2.0, tls_context(str(test_ca.ca_cert)))
    assert outcome.success, outcome
    assert outcome.detail == "HTTP 403"
    assert [p for p, _ in outcome.phases] == ["connect", "tls", "first_byte"]
    assert sum(s for _, s in outcome.phases) <= outcome.duration
    assert server.snis == ["object.test"]
    assert server.hosts == [f"object.test:{server.port}"]


def test_ipv6_endpoint(test_ca: Any, http_server: Callable[..., Any]) -> None:
    server = http_server(test_ca, host="::1")
    assert http_get("::1", server.port, "object.test", 2.0, tls_context(str(test_ca.ca_cert))).success


def test_wrong_name_fails_verification(test_ca: Any, http_server: Callable[..., Any]) -> None:
    server = http_server(test_ca)
    outcome = http_get("127.0.0.1", server.port, "other.test", 2.0, tls_context(str(test_ca.ca_cert)))
    assert (outcome.success, outcome.reason) == (False, "tls_verify"), outcome
    assert "other.test" in outcome.detail or "mismatch" in outcome.detail.lower()
    assert [p for p, _ in outcome.phases] == ["connect"]


def test_untrusted_ca_fails_verification(test_ca: Any, http_server: Callable[..., Any]) -> None:
    server = http_server(test_ca)
    outcome = http_get("127.0.0.1", server.port, "object.test", 2.0, tls_context(""))
    assert (outcome.success, outcome.reason) == (False, "tls_verify")


def test_plain_http_server_on_tls_port_is_a_tls_error(test_ca: Any, http_server: Callable[..., Any]) -> None:
    server = http_server(None)
    outcome = http_get("127.0.0.1", server.port, "object.test", 2.0, tls_context(str(test_ca.ca_cert)))
    assert (outcome.success, outcome.reason) == (False, "tls_error")


def test_plain_http_probe(http_server: Callable[..., Any]) -> None:
    server = http_server(None, response=b"HTTP/1.0 200 OK\r\n\r\nhello")
    outcome = http_get("127.0.0.1", server.port, "object.test", 2.0, None)
    assert outcome.success and outcome.detail == "HTTP 200"
    assert [p for p, _ in outcome.phases] == ["connect", "first_byte"]


@pytest.mark.parametrize(("response", "reason"), [(b"SSH-2.0-OpenSSH_9.6\r\n", "bad_response"), (b"", "closed")])
def test_non_http_answers(http_server: Callable[..., Any], response: bytes, reason: str) -> None:
    server = http_server(None, response=response)
    outcome = http_get("127.0.0.1", server.port, "object.test", 2.0, None)
    assert (outcome.success, outcome.reason) == (False, reason)


def test_silent_server_times_out(listen: Callable[..., socket.socket]) -> None:
    sock = listen()  # accepts (backlog) but never speaks TLS
    try:
        ctx = ssl.create_default_context()
        outcome = http_get("127.0.0.1", sock.getsockname()[1], "object.test", 0.3, ctx)
        assert (outcome.success, outcome.reason) == (False, "timeout")
        assert 0.3 <= outcome.duration < 1.0
    finally:
        sock.close()


def test_missing_ca_bundle_is_an_error(tmp_path: Any) -> None:
    with pytest.raises(OSError):
        tls_context(str(tmp_path / "missing.pem"))
