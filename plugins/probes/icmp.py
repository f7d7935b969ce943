"""ICMP echo with per-probe identifier and sequence and a checked peer.

icmplib builds and parses the packets and knows the unprivileged datagram
socket (the kernel owns the identifier there). Its receive loop matches
identifier and sequence but not the sender, so we loop over it ourselves and
drop echo replies from any address but the one we pinged: with raw sockets
every socket sees every reply on the host.
"""

from __future__ import annotations

import random
import time
from typing import Any

from icmplib import ICMPRequest, ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPLibError, SocketPermissionError, TimeoutExceeded

from crusoe_metrics_exporter.plugins.probes.results import INTERNAL, PERMISSION, TIMEOUT, Outcome
from crusoe_metrics_exporter.sdk import normalize_address

#: ICMP(v6) message types of an echo reply.
_ECHO_REPLY = {4: 0, 6: 129}
_DEST_UNREACHABLE = {4: 3, 6: 1}
#: ICMP error messages that quote the request they are about: destination
#: unreachable, source quench, time exceeded, parameter problem (v4);
#: destination unreachable, packet too big, time exceeded, parameter problem (v6).
_ERRORS = {4: frozenset({3, 4, 11, 12}), 6: frozenset({1, 2, 3, 4})}
PAYLOAD = b"crusoe-metrics-exporter probe"

MODE_UNPRIVILEGED = "unprivileged"
MODE_RAW = "raw"


def _socket_class(family: int) -> Any:
    return ICMPv6Socket if family == 6 else ICMPv4Socket


def detect_mode(family: int) -> str | None:
    """The socket kind this process may use: datagram if allowed, else raw, else None."""
    for mode in (MODE_UNPRIVILEGED, MODE_RAW):
        try:
            sock = _socket_class(family)(privileged=(mode == MODE_RAW))
        except ICMPLibError:
            continue
        sock.close()
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
    start = time.perf_counter()
    try:
        sock = _socket_class(family)(privileged=(mode == MODE_RAW))
    except SocketPermissionError as exc:
        return Outcome.failed(PERMISSION, time.perf_counter() - start, detail=str(exc))
    except ICMPLibError as exc:
        return Outcome.failed(INTERNAL, time.perf_counter() - start, detail=str(exc))
    try:
        request = ICMPRequest(
            destination=address,
            id=random.getrandbits(16) if identifier is None else identifier,
            sequence=sequence,
            payload=PAYLOAD,
        )
        sent = time.perf_counter()
        try:
            sock.send(request)
        except ICMPLibError as exc:
            return Outcome.failed(_send_reason(exc), time.perf_counter() - start, detail=str(exc))
        deadline = sent + timeout
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return Outcome.failed(TIMEOUT, time.perf_counter() - start)
            try:
                reply = sock.receive(request, remaining)
            except TimeoutExceeded:
                return Outcome.failed(TIMEOUT, time.perf_counter() - start)
            except ICMPLibError as exc:
                return Outcome.failed(INTERNAL, time.perf_counter() - start, detail=str(exc))
            now = time.perf_counter()
            if reply.type == _ECHO_REPLY[family]:
                peer = normalize_address(reply.source or "")
                if peer is None or peer[0] != address:
                    continue  # someone else's reply that happens to carry our id/seq
                rtt = now - sent
                return Outcome(True, now - start, (("rtt", rtt),))
            if reply.type not in _ERRORS[family]:
                # Anything else a raw socket sees (our own echo request on
                # loopback, other messages) that icmplib's quote parsing
                # happened to match.
                continue
            # An ICMP error quoting our request, typically from a router on the way.
            return Outcome.failed(
                "icmp_unreachable" if reply.type == _DEST_UNREACHABLE[family] else "icmp_error",
                now - start,
                detail=f"ICMP type {reply.type} code {reply.code} from {reply.source}",
            )
    finally:
        sock.close()


def _send_reason(exc: ICMPLibError) -> str:
    text = str(exc).lower()
    if "unreachable" in text:
        return "unreachable"
    if "permission" in text or "not permitted" in text:
        return PERMISSION
    return "send_error"


#: Every reason ping() can report.
REASONS = (TIMEOUT, PERMISSION, INTERNAL, "icmp_unreachable", "icmp_error", "unreachable", "send_error")
