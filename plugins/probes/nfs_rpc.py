"""NFS NULL RPC over TCP: connect and round trip measured separately.

Both phases are timed by a :class:`~.timing.PhaseClock`: connect is the
kernel's handshake RTT, the call lasts from right before the send to the
kernel's receive stamp of the reply, so probes running beside other work in
the exporter measure the network and the server, not their turn to run. A
failed run reports the wall time the attempt took.
"""

from __future__ import annotations

import random
import socket
import time

from crusoe_metrics_exporter.plugins.probes import timing
from crusoe_metrics_exporter.plugins.probes.parser import (
    MAX_RECORD_BYTES,
    check_null_reply,
    fragment_header,
    null_call,
)
from crusoe_metrics_exporter.plugins.probes.results import CLOSED, TIMEOUT, Outcome, socket_error_reason


class _Closed(Exception):
    pass


class _TooLarge(Exception):
    pass


def _recv_exact(clock: timing.PhaseClock, sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = clock.recv(sock, n - len(buf))
        if not chunk:
            raise _Closed
        buf += chunk
    return bytes(buf)


def _read_record(clock: timing.PhaseClock, sock: socket.socket, deadline: float) -> bytes:
    record = bytearray()
    while True:
        last, length = fragment_header(_recv_exact(clock, sock, 4, deadline))
        if len(record) + length > MAX_RECORD_BYTES:
            raise _TooLarge
        record += _recv_exact(clock, sock, length, deadline)
        if last:
            return bytes(record)


def null_rpc(address: str, port: int, version: int, timeout: float, xid: int | None = None) -> Outcome:
    """Connect to ``address:port``, send NULL for NFS ``version`` and check the reply."""
    with timing.held():
        return _null_rpc(address, port, version, timeout, random.getrandbits(32) if xid is None else xid)


def _null_rpc(address: str, port: int, version: int, timeout: float, xid: int) -> Outcome:
    deadline = time.perf_counter() + timeout
    clock = timing.PhaseClock()
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return Outcome.failed(socket_error_reason(exc), clock.wall_elapsed(), detail=str(exc))
    with sock:
        try:
            timing.enable_rx_timestamps(sock)
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            clock.connect(sock, (address, port))
        except OSError as exc:
            return Outcome.failed(socket_error_reason(exc), clock.wall_elapsed(), detail=str(exc))
        clock.phase("connect")
        try:
            clock.send(sock, null_call(xid, version))
            record = _read_record(clock, sock, deadline)
        except _Closed:
            return Outcome.failed(CLOSED, clock.wall_elapsed(), clock.phases, "connection closed before a full reply")
        except _TooLarge:
            return Outcome.failed("garbage", clock.wall_elapsed(), clock.phases, "reply record larger than 64 KiB")
        except OSError as exc:
            reason = socket_error_reason(exc)
            return Outcome.failed(TIMEOUT if reason == TIMEOUT else reason, clock.wall_elapsed(), clock.phases,
                                  str(exc))
        connected = list(clock.phases)
        clock.phase("rpc")  # before closing: the close is not part of the call
    verdict = check_null_reply(record, xid)
    if not verdict.ok:
        detail = f"server supports versions {verdict.mismatch[0]}-{verdict.mismatch[1]}" if verdict.mismatch else ""
        return Outcome.failed(verdict.reason, clock.wall_elapsed(), connected, detail)
    return Outcome(True, clock.phased(), tuple(clock.phases))
