"""ICMP echo with a random identifier, a per-round sequence and a checked peer.

The round trip is measured the way ``ping`` measures it: the clock is read
right before ``sendto`` and the reply's arrival is the kernel's receive
timestamp, so waking this thread up (and the GIL) is not part of it.

Two socket kinds, as ``ping``: unprivileged datagram sockets where
``net.ipv4.ping_group_range`` allows (the kernel owns the identifier and
delivers only our replies; ICMP errors come through the error queue with
IP_RECVERR), raw sockets otherwise (root or CAP_NET_RAW; a kernel filter
passes only echo replies and errors, and every raw socket on the host sees
every reply). In both cases an echo reply counts only when it carries our
identifier and sequence *and* comes from the probed address: a reply forged
from elsewhere with our numbers is ignored.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import time
from collections.abc import Callable

from crusoe_metrics_exporter.plugins.probes import timing
from crusoe_metrics_exporter.plugins.probes.icmp_packet import (
    DEST_UNREACHABLE,
    ECHO_REPLY,
    ERRORS,
    echo_request,
    parse,
    quoted_echo,
)
from crusoe_metrics_exporter.plugins.probes.results import INTERNAL, PERMISSION, TIMEOUT, Outcome
from crusoe_metrics_exporter.sdk import normalize_address

PAYLOAD = b"crusoe-metrics-exporter probe"

MODE_UNPRIVILEGED = "unprivileged"
MODE_RAW = "raw"

_SOL_RAW = 255
_ICMP_FILTER = 1  # linux/icmp.h, level SOL_RAW: bit set = type blocked
_ICMP6_FILTER = 1  # linux/icmpv6.h, level IPPROTO_ICMPV6: bit set = type blocked
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP = {4: 2, 6: 3}
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err

#: Seconds from the send to the arrival of what ``recvmsg`` returned with this ancillary data.
SinceSent = Callable[[list[tuple[int, int, bytes]]], float]


def open_socket(family: int, mode: str) -> socket.socket:
    """An ICMP socket of ``mode``; PermissionError when this process may not have one."""
    return socket.socket(
        socket.AF_INET6 if family == 6 else socket.AF_INET,
        socket.SOCK_RAW if mode == MODE_RAW else socket.SOCK_DGRAM,
        socket.IPPROTO_ICMPV6 if family == 6 else socket.IPPROTO_ICMP,
    )


def detect_mode(family: int) -> str | None:
    """The socket kind this process may use: datagram if allowed, else raw, else None."""
    for mode in (MODE_UNPRIVILEGED, MODE_RAW):
        try:
            open_socket(family, mode).close()
        except OSError:
            continue
        return mode
    return None


def ping(
    address: str,
    family: int,
    timeout: float,
    mode: str,
    *,
    identifier: int | None = None,
    sequence: int = 1,
) -> Outcome:
    """Send one echo request and wait for the matching reply from ``address``."""
    with timing.held():
        return _ping(address, family, timeout, mode, sequence=sequence,
                     identifier=random.getrandbits(16) if identifier is None else identifier)


def _ping(address: str, family: int, timeout: float, mode: str, *, identifier: int, sequence: int) -> Outcome:
    start = time.perf_counter_ns()

    def waited() -> float:
        return (time.perf_counter_ns() - start) / 1e9

    raw = mode == MODE_RAW
    try:
        sock = open_socket(family, mode)
    except PermissionError as exc:
        return Outcome.failed(PERMISSION, waited(), detail=str(exc))
    except OSError as exc:
        return Outcome.failed(INTERNAL, waited(), detail=str(exc))
    with sock:
        timing.enable_rx_timestamps(sock)
        try:
            _only_replies_and_errors(sock, family) if raw else _errors_to_queue(sock, family)
        except OSError as exc:
            return Outcome.failed(INTERNAL, waited(), detail=f"socket option: {exc}")
        packet = echo_request(family, identifier, sequence, PAYLOAD)
        # Non-blocking, so sendto follows the clock reading at once (with a
        # timeout Python would poll first and might wait for the GIL again).
        sock.setblocking(False)
        sent_at = time.time_ns()
        sent_mono = time.perf_counter_ns()
        try:
            sock.sendto(packet, (address, 0))
        except OSError as exc:
            return Outcome.failed(_send_reason(exc), waited(), detail=str(exc))
        if not raw:
            identifier = sock.getsockname()[1]  # the kernel's choice on datagram sockets
        deadline = sent_mono + int(timeout * 1e9)

        def since_sent(ancdata: list[tuple[int, int, bytes]]) -> float:
            # ping's method: kernel arrival stamp minus the time read before
            # sendto. Capped by what our own monotonic clock saw, so a step of
            # the realtime clock in between cannot produce nonsense.
            seen = time.perf_counter_ns() - sent_mono
            stamp = timing.rx_stamp(ancdata)
            return (seen if stamp is None else min(max(stamp - sent_at, 0), seen)) / 1e9

        while True:
            remaining = (deadline - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return Outcome.failed(TIMEOUT, waited())
            sock.settimeout(remaining)
            try:
                data, ancdata, _flags, source = sock.recvmsg(2048, timing.ANCILLARY_BYTES)
            except TimeoutError:
                return Outcome.failed(TIMEOUT, waited())
            except OSError as exc:
                if raw:
                    return Outcome.failed(INTERNAL, waited(), detail=str(exc))
                # A datagram socket reports an ICMP error as a failed receive;
                # the details (type, code, who sent it) are in the error queue.
                failure = _queued_error(sock, family, address, sequence, since_sent)
                if failure is None:
                    continue
                return failure
            message = parse(data, family, ip_header=raw and family == 4)
            if message is None or (message.identifier, message.sequence) != (identifier, sequence):
                continue
            if message.type == ECHO_REPLY[family]:
                peer = normalize_address(source[0])
                if peer is None or peer[0] != address:
                    continue  # someone else's reply that happens to carry our id/seq
                rtt = since_sent(ancdata)
                return Outcome(True, rtt, (("rtt", rtt),))
            if normalize_address(message.quoted_destination) != (address, family):
                continue  # an error about another host's echo that reuses our numbers
            return _icmp_failure(family, message.type, message.code, source[0], since_sent(ancdata))


def _only_replies_and_errors(sock: socket.socket, family: int) -> None:
    """Kernel filter on a raw socket: pass echo replies and the errors we read, drop the rest.

    Without it a raw ICMPv6 socket also wakes for neighbour discovery and a
    raw ICMP socket for every echo request the host sends or answers.
    """
    wanted = {ECHO_REPLY[family], *ERRORS[family]}
    if family == 4:
        blocked = 0xFFFF_FFFF & ~sum(1 << kind for kind in wanted)
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", blocked))
        return
    words = [0xFFFF_FFFF] * 8
    for kind in wanted:
        words[kind >> 5] &= ~(1 << (kind & 31))
    sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("=8I", *words))


def _errors_to_queue(sock: socket.socket, family: int) -> None:
    """Have a datagram socket keep ICMP errors about our request (else the kernel drops them)."""
    if family == 4:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)


def _queued_error(sock: socket.socket, family: int, address: str, sequence: int,
                  since_sent: SinceSent) -> Outcome | None:
    """The failure an ICMP error in the socket's error queue means, if it is about our request."""
    try:
        original, ancdata, _flags, destination = sock.recvmsg(2048, timing.ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    level = socket.IPPROTO_IP if family == 4 else socket.IPPROTO_IPV6
    kind = _IP_RECVERR if family == 4 else _IPV6_RECVERR
    for cmsg_level, cmsg_type, data in ancdata:
        if (cmsg_level, cmsg_type) != (level, kind) or len(data) < _EXTENDED_ERR.size:
            continue
        _errno, origin, icmp_type, icmp_code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(data)
        echo = quoted_echo(original, family)
        if origin != _SO_EE_ORIGIN_ICMP[family] or echo is None or echo[1] != sequence:
            return None
        if normalize_address(destination[0]) != (address, family):
            return None
        return _icmp_failure(family, icmp_type, icmp_code, _offender(data[_EXTENDED_ERR.size:]),
                             since_sent(ancdata))
    return None


def _offender(sockaddr: bytes) -> str:
    """The address in the ``struct sockaddr`` after a sock_extended_err (who sent the error)."""
    if len(sockaddr) >= 8 and int.from_bytes(sockaddr[:2], "little") == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, sockaddr[4:8])
    if len(sockaddr) >= 24 and int.from_bytes(sockaddr[:2], "little") == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, sockaddr[8:24])
    return "?"


def _icmp_failure(family: int, icmp_type: int, icmp_code: int, sender: str, elapsed: float) -> Outcome:
    # An ICMP error quoting our request, typically from a router on the way.
    return Outcome.failed(
        "icmp_unreachable" if icmp_type == DEST_UNREACHABLE[family] else "icmp_error",
        elapsed,
        detail=f"ICMP type {icmp_type} code {icmp_code} from {sender}",
    )


def _send_reason(exc: OSError) -> str:
    # No route, or a neighbour that never answered: the kernel refuses the send.
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "send_error"


#: Every reason ping() can report.
REASONS = (TIMEOUT, PERMISSION, INTERNAL, "icmp_unreachable", "icmp_error", "unreachable", "send_error")
