"""ICMP and ICMPv6 echo messages: building requests, reading replies and errors.

Pure functions over bytes (RFC 792, RFC 4443), so every verdict is testable
without a socket. An error message counts as ours only when the request it
quotes carries our identifier and sequence and was addressed to our target.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
DEST_UNREACHABLE = {4: 3, 6: 1}
#: Error messages that quote the datagram they are about: destination
#: unreachable, source quench, time exceeded, parameter problem (v4);
#: destination unreachable, packet too big, time exceeded, parameter problem (v6).
ERRORS = {4: frozenset({3, 4, 11, 12}), 6: frozenset({1, 2, 3, 4})}

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_IPV6_HEADER_BYTES = 40
_PROTO_ICMP = 1
_PROTO_ICMPV6 = 58


@dataclass(frozen=True)
class Message:
    """An echo reply, or an error about one of our echo requests."""

    type: int
    code: int
    #: Of the reply, or of the request an error quotes.
    identifier: int
    sequence: int
    #: Errors only: where the quoted request was going ("" when not quoted).
    quoted_destination: str = ""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, identifier: int, sequence: int, payload: bytes) -> bytes:
    """An echo request. ICMPv6 checksums cover the IP pseudo-header, so the kernel fills those in."""
    unsummed = _HEADER.pack(ECHO_REQUEST[family], 0, 0, identifier, sequence) + payload
    if family == 6:
        return unsummed
    return _HEADER.pack(ECHO_REQUEST[family], 0, checksum(unsummed), identifier, sequence) + payload


def parse(packet: bytes, family: int, *, ip_header: bool) -> Message | None:
    """An echo reply, or an error quoting an echo request; None for anything else.

    ``ip_header``: the packet starts with its IPv4 header (raw IPv4 sockets).
    """
    if ip_header:
        packet = _ipv4_payload(packet, _PROTO_ICMP)[1]
    if len(packet) < _HEADER.size:
        return None
    kind, code, _sum, identifier, sequence = _HEADER.unpack_from(packet)
    if kind == ECHO_REPLY[family]:
        return Message(kind, code, identifier, sequence)
    if kind not in ERRORS[family]:
        return None
    quoted = _quoted_request(packet[_HEADER.size:], family)
    if quoted is None:
        return None
    destination, identifier, sequence = quoted
    return Message(kind, code, identifier, sequence, destination)


def quoted_echo(original: bytes, family: int) -> tuple[int, int] | None:
    """``(identifier, sequence)`` of the echo request an error-queue entry returns to us."""
    if len(original) < _HEADER.size:
        return None
    kind, _code, _sum, identifier, sequence = _HEADER.unpack_from(original)
    return (identifier, sequence) if kind == ECHO_REQUEST[family] else None


def _ipv4_payload(packet: bytes, protocol: int) -> tuple[str, bytes]:
    """(destination, payload) of an IPv4 datagram carrying ``protocol``; ("", b"") otherwise."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != protocol:
        return "", b""
    header_bytes = (packet[0] & 0x0F) * 4
    if header_bytes < 20 or len(packet) < header_bytes:
        return "", b""
    return str(ipaddress.IPv4Address(packet[16:20])), packet[header_bytes:]


def _quoted_request(inner: bytes, family: int) -> tuple[str, int, int] | None:
    """(destination, identifier, sequence) of the echo request an error quotes."""
    if family == 4:
        destination, icmp = _ipv4_payload(inner, _PROTO_ICMP)
    else:
        if len(inner) < _IPV6_HEADER_BYTES or inner[0] >> 4 != 6 or inner[6] != _PROTO_ICMPV6:
            return None
        destination = str(ipaddress.IPv6Address(inner[24:40]))
        icmp = inner[_IPV6_HEADER_BYTES:]
    echo = quoted_echo(icmp, family) if destination else None
    return None if echo is None else (destination, *echo)
