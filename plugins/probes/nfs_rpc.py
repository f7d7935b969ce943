"""NFS NULL RPC over TCP: connect and round trip measured separately."""

from __future__ import annotations

import random
import socket
import time

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


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed
        buf += chunk
    return bytes(buf)


def _read_record(sock: socket.socket, deadline: float) -> bytes:
    record = bytearray()
    while True:
        last, length = fragment_header(_recv_exact(sock, 4, deadline))
        if len(record) + length > MAX_RECORD_BYTES:
            raise _TooLarge
        record += _recv_exact(sock, length, deadline)
        if last:
            return bytes(record)


def null_rpc(address: str, port: int, version: int, timeout: float, xid: int | None = None) -> Outcome:
    """Connect to ``address:port``, send NULL for NFS ``version`` and check the reply."""
    start = time.perf_counter()
    deadline = start + timeout
    phases: list[tuple[str, float]] = []
    xid = random.getrandbits(32) if xid is None else xid
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        return Outcome.failed(socket_error_reason(exc), time.perf_counter() - start, detail=str(exc))
    connected = time.perf_counter()
    phases.append(("connect", connected - start))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(deadline - time.perf_counter(), 0.001))
        sock.sendall(null_call(xid, version))
        record = _read_record(sock, deadline)
    except _Closed:
        return Outcome.failed(CLOSED, time.perf_counter() - start, phases, "connection closed before a full reply")
    except _TooLarge:
        return Outcome.failed("garbage", time.perf_counter() - start, phases, "reply record larger than 64 KiB")
    except OSError as exc:
        reason = socket_error_reason(exc)
        return Outcome.failed(TIMEOUT if reason == TIMEOUT else reason, time.perf_counter() - start, phases, str(exc))
    finally:
        sock.close()
    done = time.perf_counter()
    verdict = check_null_reply(record, xid)
    if not verdict.ok:
        detail = f"server supports versions {verdict.mismatch[0]}-{verdict.mismatch[1]}" if verdict.mismatch else ""
        return Outcome.failed(verdict.reason, done - start, phases, detail)
    phases.append(("rpc", done - connected))
    return Outcome(True, done - start, tuple(phases))
