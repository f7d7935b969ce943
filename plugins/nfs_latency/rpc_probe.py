"""Which RPC client serves one NFS mount: ask the kernel by making it send one RPC.

On kernels up to 6.3 nothing outside the kernel links a mount to its RPC
client (``/sys/fs/nfs/<dev>/nfs_client`` appeared later), and the RPC
tracepoints name only the client id. So the exporter asks: a short-lived
child process opens the mount point (``O_PATH``), checks that the open file
is on the expected superblock (``st_dev``), then - once the eBPF program is
told the child's thread id - calls ``fstatfs()``. NFS answers that with one
STATFS (v4) or FSSTAT (v3) RPC on the superblock's own client
(``nfs_server->client``); the program sees it complete on the child's
thread and records the client id. Nothing else runs on that thread, so
the answer is exact; a second, different client on it is reported as
ambiguous instead of guessed.

NFS mounts can hang. Every step is bounded by a timeout; a child that
does not answer is killed (NFS waits are killable) and, should it stay
stuck anyway, reaped later without blocking anybody.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Protocol

from crusoe_metrics_exporter.plugins.nfs_latency.rpc_parser import ClientKey, ProbeResult

# Runs in the child: standard library only, no site packages (-I -S), so it
# starts fast and cannot be influenced by the environment.
_CHILD = r"""
import os, sys
out = sys.stdout
try:
    fd = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(fd)
except OSError as exc:
    out.write("error open %d\n" % exc.errno); out.flush(); sys.exit(0)
out.write("ready %d:%d\n" % (os.major(st.st_dev), os.minor(st.st_dev))); out.flush()
if sys.stdin.readline().strip() != "go":
    sys.exit(0)
try:
    os.fstatvfs(fd)
except OSError as exc:
    out.write("error statfs %d\n" % exc.errno); out.flush(); sys.exit(0)
out.write("done\n"); out.flush()
"""


class ProbeTracer(Protocol):
    """The kernel side: who to watch, and what it saw."""

    def arm(self, tid: int) -> None: ...

    def result(self) -> ProbeResult: ...

    def disarm(self) -> None: ...


@dataclass(frozen=True)
class ProbeOutcome:
    client: ClientKey | None
    #: Empty on success, else one line for the log.
    problem: str = ""


class ProbeRunner:
    """Runs probes one at a time; keeps children that would not die from becoming zombies forever."""

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._stuck: list[subprocess.Popen[bytes]] = []

    def probe(self, path: str, expected_dev: str, tracer: ProbeTracer, timeout: float) -> ProbeOutcome:
        """Which client serves the superblock ``expected_dev`` mounted at ``path`` (never raises)."""
        self.reap()
        deadline = time.monotonic() + timeout
        try:
            child = subprocess.Popen(
                [self._python, "-I", "-S", "-c", _CHILD, path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            return ProbeOutcome(None, f"cannot start the probe process: {exc}")
        armed = False
        try:
            line = _read_line(child, deadline)
            if line is None:
                return ProbeOutcome(None, f"no answer from {path} within {timeout:g}s (mount hung?)")
            if line.startswith("error"):
                return ProbeOutcome(None, f"{path}: {_describe(line)}")
            if line != f"ready {expected_dev}":
                # Another filesystem is mounted over it, or it changed since
                # mountinfo was read: its client would be the wrong one.
                return ProbeOutcome(None, f"{path} is not on device {expected_dev} ({line!r})")
            tracer.arm(child.pid)
            armed = True
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
            line = _read_line(child, deadline)
            if line is None:
                return ProbeOutcome(None, f"statfs on {path} did not finish within {timeout:g}s (mount hung?)")
            if line != "done":
                return ProbeOutcome(None, f"{path}: {_describe(line)}")
            seen = tracer.result()
            if seen.tid != child.pid or seen.hits == 0:
                return ProbeOutcome(None, f"statfs on {path} completed but no NFS RPC was seen on its thread")
            if seen.mixed:
                return ProbeOutcome(None, f"statfs on {path} ran RPCs on more than one client; not guessing")
            return ProbeOutcome(seen.client)
        except OSError as exc:
            return ProbeOutcome(None, f"probe of {path} failed: {exc}")
        finally:
            if armed:
                tracer.disarm()
            self._finish(child)

    def _finish(self, child: subprocess.Popen[bytes]) -> None:
        for stream in (child.stdin, child.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if child.poll() is None:
            child.kill()
            try:
                child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._stuck.append(child)

    def reap(self) -> None:
        self._stuck = [c for c in self._stuck if c.poll() is None]

    @property
    def stuck(self) -> int:
        """Probe processes that did not die when killed (blocked in the kernel)."""
        self.reap()
        return len(self._stuck)


def _read_line(child: subprocess.Popen[bytes], deadline: float) -> str | None:
    """One line from the child before ``deadline``; None on timeout or when it exits first."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    buffer = b""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 256)
        if not chunk:
            return None
        buffer += chunk
    return buffer.split(b"\n", 1)[0].decode("ascii", "replace").strip()


def _describe(line: str) -> str:
    parts = line.split()
    if len(parts) == 3 and parts[2].isdigit():
        return f"{parts[1]} failed: {os.strerror(int(parts[2]))}"
    return line
