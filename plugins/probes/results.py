"""Probe identities, outcomes, and the store the scheduler writes and scrapes read."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

ICMP = "icmp"
NFS_RPC = "nfs_rpc"
HTTPS = "https"
HTTP = "http"
PROBES = (ICMP, NFS_RPC, HTTPS, HTTP)

TARGET_NFS = "nfs"
TARGET_OBJSTORE = "objectstore"

#: Failure reasons shared by the socket-level probes (label values, bounded).
TIMEOUT = "timeout"
REFUSED = "refused"
UNREACHABLE = "unreachable"
CONNECT_ERROR = "connect_error"
CLOSED = "closed"
PERMISSION = "permission"
INTERNAL = "internal"


@dataclass(frozen=True, order=True)
class ProbeKey:
    """One probe of one endpoint. ``port`` is 0 for ICMP."""

    probe: str
    target: str
    endpoint: str
    port: int = 0

    def labels(self) -> tuple[str, str, str, str]:
        return (self.probe, self.target, self.endpoint, str(self.port) if self.port else "")


@dataclass(frozen=True)
class Outcome:
    """What one probe run found. ``duration`` is the time spent, success or not."""

    success: bool
    duration: float
    phases: tuple[tuple[str, float], ...] = ()
    reason: str = ""
    detail: str = ""

    @classmethod
    def failed(
        cls, reason: str, duration: float, phases: Iterable[tuple[str, float]] = (), detail: str = ""
    ) -> Outcome:
        return cls(False, duration, tuple(phases), reason, detail)


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    #: Unix time the run finished (for staleness checks).
    finished_at: float


def socket_error_reason(exc: OSError) -> str:
    """Classify a connect/send/recv error into a bounded reason."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return CLOSED
    if isinstance(exc, PermissionError):
        return PERMISSION
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return UNREACHABLE
    return CONNECT_ERROR


class ResultStore:
    """Latest result per probe and cumulative failures per reason; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[ProbeKey, ProbeResult] = {}
        self._failures: dict[tuple[ProbeKey, str], int] = {}
        #: The current targets' probes once retain() has run; a result for any
        #: other key comes from a probe that was running when its target vanished.
        self._wanted: set[ProbeKey] | None = None

    def record(self, key: ProbeKey, result: ProbeResult) -> ProbeResult | None:
        """Store a result; returns the one it replaces."""
        with self._lock:
            if self._wanted is not None and key not in self._wanted:
                return None
            previous = self._latest.get(key)
            self._latest[key] = result
            if not result.outcome.success:
                fkey = (key, result.outcome.reason)
                self._failures[fkey] = self._failures.get(fkey, 0) + 1
            return previous

    def has_result(self, key: ProbeKey) -> bool:
        with self._lock:
            return key in self._latest

    def retain(self, keys: set[ProbeKey]) -> None:
        """Forget endpoints that are no longer targets, so their series disappear."""
        with self._lock:
            self._wanted = set(keys)
            for key in [k for k in self._latest if k not in keys]:
                del self._latest[key]
            for fkey in [f for f in self._failures if f[0] not in keys]:
                del self._failures[fkey]

    def snapshot(self) -> tuple[dict[ProbeKey, ProbeResult], dict[tuple[ProbeKey, str], int]]:
        with self._lock:
            return dict(self._latest), dict(self._failures)
