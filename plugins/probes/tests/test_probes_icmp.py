"""ICMP echo against loopback and a silent peer in a network namespace of our own."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins.probes import icmp

#: Raw sockets and network namespaces: in CI a skip (not root) is a failure.
pytestmark = pytest.mark.netns


@pytest.mark.parametrize(("address", "family"), [("127.0.0.1", 4), ("::1", 6)])
def test_loopback_answers(address: str, family: int) -> None:
    mode = icmp.detect_mode(family)
    assert mode is not None, "neither datagram nor raw ICMP sockets are available"
    outcome = icmp.ping(address, family, 2.0, mode)
    assert outcome.success, outcome
    rtt = dict(outcome.phases)["rtt"]
    assert 0 < rtt <= outcome.duration < 1.0


def _silent_peer(veth_peer: Callable[[int], Any]) -> tuple[Any, str, str]:
    """A client namespace linked by veth to a server namespace that ignores echo requests."""
    # Control (inside veth_peer): the peer answers until told to stay silent,
    # so the timeouts below come from silence, not from a broken link.
    peer = veth_peer(7)
    peer.server.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
    peer.server.sysctl("net.ipv6.icmp.echo_ignore_all", "1")
    return peer.client, peer.v4, peer.v6


def test_silent_peer_times_out(veth_peer: Callable[[int], Any]) -> None:
    client, v4, v6 = _silent_peer(veth_peer)
    for address, family in ((v4, 4), (v6, 6)):
        outcome = client.call(icmp.ping, address, family, 0.5, icmp.MODE_RAW)
        assert (outcome.success, outcome.reason) == (False, "timeout"), outcome
        assert 0.5 <= outcome.duration < 1.5
        assert outcome.phases == ()


def _echo_reply(identifier: int, sequence: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", 0, 0, 0, identifier, sequence)
    data = header + payload + (b"\x00" if len(payload) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("!BBHHH", 0, 0, ~total & 0xFFFF, identifier, sequence) + payload


def _forge_replies(stop: threading.Event, identifier: int, sequence: int) -> None:
    # An echo reply from 127.0.0.1 carrying the probe's identifier and sequence:
    # a raw ICMP socket sees it like any other reply on the host.
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        while not stop.is_set():
            sock.sendto(_echo_reply(identifier, sequence, icmp.PAYLOAD), ("127.0.0.1", 0))
            stop.wait(0.05)
    finally:
        sock.close()


def test_reply_from_another_peer_is_not_accepted(veth_peer: Callable[[int], Any]) -> None:
    client, silent, _ = _silent_peer(veth_peer)
    identifier, sequence = 0x4242, 7
    stop = threading.Event()
    forger = threading.Thread(target=client.call, args=(_forge_replies, stop, identifier, sequence))
    forger.start()
    try:
        time.sleep(0.1)

        def forged_reply_seen() -> tuple[str, int, int] | None:
            # Control: a raw ICMP socket on this host receives the forged reply,
            # with our identifier and sequence; only the sender gives it away.
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
                sock.settimeout(1.0)
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    packet, (source, _port) = sock.recvfrom(2048)
                    header = (packet[0] & 0x0F) * 4
                    kind, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", packet, header)
                    if kind == 0:
                        return source, ident, seq
            return None

        assert client.call(forged_reply_seen) == ("127.0.0.1", identifier, sequence)

        outcome = client.call(icmp.ping, silent, 4, 0.5, icmp.MODE_RAW, identifier=identifier, sequence=sequence)
        assert (outcome.success, outcome.reason) == (False, "timeout"), outcome
    finally:
        stop.set()
        forger.join()


def test_unprivileged_datagram_sockets_where_ping_group_range_allows(netns: Callable[[], Any]) -> None:
    allowed, denied = netns(), netns()
    allowed.sysctl("net.ipv4.ping_group_range", "0 2147483647")
    denied.sysctl("net.ipv4.ping_group_range", "1 0")
    assert allowed.call(icmp.detect_mode, 4) == icmp.MODE_UNPRIVILEGED
    assert allowed.call(icmp.detect_mode, 6) == icmp.MODE_UNPRIVILEGED
    assert denied.call(icmp.detect_mode, 4) == icmp.MODE_RAW  # we are root: raw is the fallback
    for address, family in (("127.0.0.1", 4), ("::1", 6)):
        outcome = allowed.call(icmp.ping, address, family, 2.0, icmp.MODE_UNPRIVILEGED)
        assert outcome.success, outcome
    refused = denied.call(icmp.ping, "127.0.0.1", 4, 1.0, icmp.MODE_UNPRIVILEGED)
    assert (refused.success, refused.reason) == (False, "permission")


@pytest.mark.parametrize("mode", [icmp.MODE_RAW, icmp.MODE_UNPRIVILEGED])
def test_icmp_error_from_a_router_is_a_failure_not_a_timeout(netns: Callable[[], Any], mode: str) -> None:
    # client --veth-- router; the router has no route to 10.77/16 and answers
    # with ICMP destination unreachable quoting our echo request. A raw socket
    # reads the error like any ICMP packet; a datagram socket only gets it
    # through its error queue (IP_RECVERR), or the kernel drops it.
    client, router = netns(), netns()
    if mode == icmp.MODE_UNPRIVILEGED:
        client.sysctl("net.ipv4.ping_group_range", "0 2147483647")
    tag = f"{os.getpid() % 10000}{client.name[-1]}"
    a, b = f"cra{tag}", f"crb{tag}"
    client.exec("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", router.name)
    client.exec("ip", "addr", "add", "10.213.8.1/24", "dev", a)
    client.exec("ip", "addr", "add", "fd00:213:8::1/64", "dev", a, "nodad")
    client.exec("ip", "link", "set", a, "up")
    client.exec("ip", "route", "add", "10.77.0.0/16", "via", "10.213.8.2")
    client.exec("ip", "-6", "route", "add", "fd00:77::/32", "via", "fd00:213:8::2")
    router.exec("ip", "addr", "add", "10.213.8.2/24", "dev", b)
    router.exec("ip", "addr", "add", "fd00:213:8::2/64", "dev", b, "nodad")
    router.exec("ip", "link", "set", b, "up")
    router.sysctl("net.ipv4.ip_forward", "1")
    router.sysctl("net.ipv6.conf.all.forwarding", "1")
    router.exec("ip", "route", "add", "unreachable", "10.77.0.0/16")
    router.exec("ip", "-6", "route", "add", "unreachable", "fd00:77::/32")
    for address, family, router_address in (("10.77.1.1", 4, "10.213.8.2"), ("fd00:77::1", 6, "fd00:213:8::2")):
        outcomes = [client.call(icmp.ping, address, family, 1.0, mode) for _ in range(3)]
        # The first attempt may time out while the fresh link resolves neighbours.
        outcome = next((o for o in outcomes if o.reason != "timeout"), outcomes[-1])
        assert (outcome.success, outcome.reason) == (False, "icmp_unreachable"), outcomes
        assert router_address in outcome.detail
        assert outcome.duration < 1.0
