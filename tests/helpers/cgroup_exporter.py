"""The real exporter process in a memory cgroup of its own (the shipped 256 MiB), for the fault and load tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from helpers.cgroup import MemoryCgroup, cgroup_unavailable, memory_cgroup
from helpers.processes import stop
from helpers.server import CLI, free_port
from helpers.waiting import http_status, wait_for_ok

#: The memory limit the DaemonSet and the systemd unit shipped when issue 16's trial ran.
TRIAL_LIMIT = 256 * 1024 * 1024


@dataclass
class CgroupExporter:
    proc: subprocess.Popen[bytes]
    port: int
    cgroup: MemoryCgroup
    stderr: IO[bytes]
    #: Seconds from exec to the first /health answer.
    listened_after: float

    def get(self, path: str, timeout: float = 15.0) -> tuple[int, str, float]:
        """(status, body, seconds) of one GET; an HTTP error status is an answer too."""
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode(), time.monotonic() - started
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), time.monotonic() - started

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def status(self, key: str) -> int:
        """One number from /proc/<pid>/status (``Threads``, ``VmHWM`` in KiB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(key)

    def peak_rss(self) -> int:
        """The exporter's peak resident memory in bytes (the cgroup's peak also counts page cache and workers)."""
        return self.status("VmHWM") * 1024

    def alive(self) -> None:
        assert self.proc.poll() is None, f"exporter exited with {self.proc.returncode}: {self.log()[-4000:]}"
        assert self.cgroup.oom_kills() == 0

    def wait_ready(self, seconds: float = 30.0) -> None:
        """Until every plugin has settled (/ready answers 200); the exporter must stay up meanwhile."""
        deadline = time.monotonic() + seconds
        while self.get("/ready")[0] != 200:
            self.alive()
            assert time.monotonic() < deadline, f"plugins never settled: {self.get('/ready')[1]}"
            time.sleep(0.05)


@contextmanager
def exporter_in_cgroup(args: Sequence[str], env: Mapping[str, str], limit: int = TRIAL_LIMIT,
                       wrapper: Sequence[str] = ()) -> Iterator[CgroupExporter]:
    """``crusoe-metrics-exporter serve *args`` in a fresh memory cgroup, yielded once /health answers.

    ``env`` is added to this process's environment (PORT and LISTEN_ADDRESS are set here);
    ``wrapper`` runs inside the cgroup around the exporter (``prlimit --nofile=...``).
    """
    reason = cgroup_unavailable()
    if reason:
        pytest.skip(reason)
    port = free_port()
    full_env = {**os.environ, **env, "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1"}
    with memory_cgroup(limit) as cgroup, tempfile.TemporaryFile() as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(cgroup.wrap([*wrapper, CLI, "serve", *args]), env=full_env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            # A short step: the time to the first answer is reported as the start-up time.
            wait_for_ok(lambda: http_status(f"http://127.0.0.1:{port}/health", timeout=1), proc, 30, "exporter",
                        step=0.01)
            yield CgroupExporter(proc, port, cgroup, stderr, time.monotonic() - started)
        finally:
            stop(proc)
