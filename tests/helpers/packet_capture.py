"""Kernel-stamped packet capture on a namespace's loopback: where a TCP exchange really spent its time.

An AF_PACKET socket sees every packet on ``lo`` twice, when it is sent
(PACKET_OUTGOING) and when it is received (PACKET_HOST), each with the
kernel's timestamp. From these the network + server time of a connection's
phases follows without trusting the code under test: the handshake from the
SYN leaving to the SYN-ACK arriving, a request/response from the request
leaving to the response arriving. Create it inside a network namespace of the
test's own, so nothing else's traffic is on that loopback.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass

_ETH_P_ALL = 0x0003
_PACKET_HOST = 0
_PACKET_OUTGOING = 4
_SO_TIMESTAMPNS = 64
_SYN, _ACK = 0x02, 0x10


@dataclass(frozen=True)
class Packet:
    stamp_ns: int
    outgoing: bool
    sport: int
    dport: int
    flags: int
    payload: int


@dataclass(frozen=True)
class Exchange:
    """One TCP connection from ``client_port``: handshake and first request/response, in seconds."""

    handshake: float
    request_response: float


class LoopbackCapture:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self.packets: list[Packet] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame, ancdata, _flags, address = self._sock.recvmsg(256, 256)
            except TimeoutError:
                continue
            stamp = next((struct.unpack("=qq", data[:16]) for level, kind, data in ancdata
                          if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS), None)
            packet = _tcp(frame[14:])  # lo frames carry an all-zero Ethernet header
            if stamp is None or packet is None or address[2] not in (_PACKET_HOST, _PACKET_OUTGOING):
                continue
            sport, dport, flags, payload = packet
            self.packets.append(Packet(stamp[0] * 1_000_000_000 + stamp[1], address[2] == _PACKET_OUTGOING,
                                       sport, dport, flags, payload))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def exchanges(self, server_port: int) -> list[Exchange]:
        """Every complete connection to ``server_port`` seen so far."""
        by_client: dict[int, list[Packet]] = {}
        for p in self.packets:
            if server_port in (p.sport, p.dport):
                by_client.setdefault(p.sport if p.dport == server_port else p.dport, []).append(p)
        found = []
        for client, packets in by_client.items():
            def first(outgoing: bool, to_server: bool, want: int, payload: bool,
                      packets: list[Packet] = packets, client: int = client) -> int | None:
                for p in packets:
                    if (p.outgoing == outgoing and (p.sport == client) == to_server
                            and p.flags & (_SYN | _ACK) == want and (p.payload > 0) == payload):
                        return p.stamp_ns
                return None

            syn = first(True, True, _SYN, False)
            syn_ack = first(False, False, _SYN | _ACK, False)
            request = first(True, True, _ACK, True)
            response = first(False, False, _ACK, True)
            if None not in (syn, syn_ack, request, response):
                assert syn is not None and syn_ack is not None and request is not None and response is not None
                found.append(Exchange((syn_ack - syn) / 1e9, (response - request) / 1e9))
        return found


def _tcp(packet: bytes) -> tuple[int, int, int, int] | None:
    """(source port, destination port, flags, payload bytes) of an IPv4 TCP packet."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return None
    ip_header = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if len(packet) < ip_header + 20:
        return None
    sport, dport = struct.unpack_from("!HH", packet, ip_header)
    tcp_header = (packet[ip_header + 12] >> 4) * 4
    flags = packet[ip_header + 13]
    return sport, dport, flags, total - ip_header - tcp_header
