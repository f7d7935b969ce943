"""ICMP echo packets as bytes: requests we build, replies and errors we accept or drop."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from crusoe_metrics_exporter.plugins.probes.icmp_packet import Message, checksum, echo_request, parse, quoted_echo


def _ipv4(source: str, destination: str, payload: bytes, options: bytes = b"", protocol: int = 1) -> bytes:
    words = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | words, 0, 4 * words + len(payload), 0, 0, 64, protocol, 0,
                         ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(destination).packed)
    return header + options + payload


def _ipv6(source: str, destination: str, payload: bytes, next_header: int = 58) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64) + ipaddress.IPv6Address(source).packed
            + ipaddress.IPv6Address(destination).packed + payload)


def test_v4_request_carries_a_valid_checksum_and_our_numbers() -> None:
    packet = echo_request(4, 0x1234, 7, b"payload")
    assert checksum(packet) == 0  # a correct Internet checksum sums to zero
    assert struct.unpack_from("!BBHHH", packet)[0:2] == (8, 0)
    assert struct.unpack_from("!HH", packet, 4) == (0x1234, 7) and packet.endswith(b"payload")


def test_v6_request_leaves_the_checksum_to_the_kernel() -> None:
    # It covers the IPv6 pseudo-header (source address), which only the kernel knows.
    assert struct.unpack_from("!BBHHH", echo_request(6, 1, 2, b"x")) == (128, 0, 0, 1, 2)


def test_reply_behind_an_ipv4_header_with_options() -> None:
    reply = struct.pack("!BBHHH", 0, 0, 0, 0xBEEF, 3) + b"data"
    packet = _ipv4("10.0.0.2", "10.0.0.1", reply, options=b"\x01\x01\x01\x00")  # NOPs, end of list
    assert parse(packet, 4, ip_header=True) == Message(0, 0, 0xBEEF, 3)


def test_v6_reply_without_ip_header() -> None:
    assert parse(struct.pack("!BBHHH", 129, 0, 0, 9, 10), 6, ip_header=False) == Message(129, 0, 9, 10)


def test_v4_error_names_the_quoted_request_and_its_destination() -> None:
    request = echo_request(4, 0x4242, 5, b"probe")
    quoted = _ipv4("10.0.0.1", "10.77.1.1", request)[:28]  # routers quote the header + 8 bytes
    error = struct.pack("!BBHI", 3, 1, 0, 0) + quoted
    packet = _ipv4("10.0.0.254", "10.0.0.1", error)
    assert parse(packet, 4, ip_header=True) == Message(3, 1, 0x4242, 5, "10.77.1.1")


def test_v6_error_names_the_quoted_request_and_its_destination() -> None:
    quoted = _ipv6("fd00::1", "fd00:77::1", echo_request(6, 0x4242, 5, b"probe"))
    packet = struct.pack("!BBHI", 1, 0, 0, 0) + quoted
    assert parse(packet, 6, ip_header=False) == Message(1, 0, 0x4242, 5, "fd00:77::1")


@pytest.mark.parametrize(
    ("packet", "family", "ip_header"),
    [
        (b"", 4, False),
        (b"\x00\x00\x00", 6, False),
        (_ipv4("10.0.0.2", "10.0.0.1", struct.pack("!BBHHH", 0, 0, 0, 1, 1), protocol=17), 4, True),  # not ICMP
        (struct.pack("!BBHHH", 8, 0, 0, 1, 1), 4, False),  # an echo request (ours, looped back)
        (struct.pack("!BBHHH", 135, 0, 0, 0, 0), 6, False),  # neighbour solicitation
        (struct.pack("!BBHI", 3, 1, 0, 0) + b"\x45\x00", 4, False),  # error quoting too little
        # An error quoting a UDP datagram, not an echo request.
        (struct.pack("!BBHI", 3, 3, 0, 0) + _ipv4("10.0.0.1", "10.0.0.9", b"\x00" * 8, protocol=17), 4, False),
        (struct.pack("!BBHI", 1, 0, 0, 0) + _ipv6("fd00::1", "fd00::9", b"\x00" * 8, next_header=17), 6, False),
    ],
)
def test_anything_else_is_not_ours(packet: bytes, family: int, ip_header: bool) -> None:
    assert parse(packet, family, ip_header=ip_header) is None


def test_error_queue_entry_returns_our_request() -> None:
    assert quoted_echo(echo_request(4, 77, 9, b"x"), 4) == (77, 9)
    assert quoted_echo(struct.pack("!BBHHH", 0, 0, 0, 77, 9), 4) is None  # a reply is not a request
    assert quoted_echo(b"\x08\x00", 4) is None
