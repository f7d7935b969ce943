"""A memory-limited cgroup for one test process, as the DaemonSet and the systemd unit give the exporter.

Uses cgroup v2 when the unified hierarchy has the memory controller, else the
v1 memory hierarchy (this development VM mounts v1 with a v2 tree beside it).
Processes start inside it through a tiny shell wrapper that moves itself in
before exec, so the exporter and every child it forks are charged from the
first byte. The cgroup is removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

V2_ROOT = Path("/sys/fs/cgroup")
V1_MEMORY = Path("/sys/fs/cgroup/memory")


def cgroup_unavailable() -> str | None:
    """Why a memory cgroup cannot be made here, or None."""
    if os.geteuid() != 0:
        return "memory cgroups need root"
    if _v2_memory() or (V1_MEMORY / "memory.limit_in_bytes").exists():
        return None
    return "no cgroup memory controller (neither v2 with memory nor v1 memory hierarchy)"


def _v2_memory() -> bool:
    try:
        return "memory" in (V2_ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return False


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    v2: bool

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started inside this cgroup."""
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "in-cgroup", *argv]

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    name = f"cme-test-{uuid.uuid4().hex[:8]}"
    if _v2_memory():
        path = V2_ROOT / name
        path.mkdir()
        group = MemoryCgroup(path, True)
        (path / "memory.max").write_text(str(limit_bytes))
        with contextlib.suppress(OSError):  # no swapping around the limit, where swap is accounted
            (path / "memory.swap.max").write_text("0")
    else:
        path = V1_MEMORY / name
        path.mkdir()
        group = MemoryCgroup(path, False)
        (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        with contextlib.suppress(OSError):  # no swapping around the limit, where the kernel offers the knob
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    try:
        yield group
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not (path / "cgroup.procs").read_text().strip():
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            path.rmdir()
