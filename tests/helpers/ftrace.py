"""The kernel's own event tracer as an independent reference: a private ftrace instance.

An instance (``/sys/kernel/tracing/instances/<name>``) has its own buffer,
events and clock, so a test neither disturbs nor is disturbed by anyone
else's tracing. Its records are timestamped with the monotonic clock (the
one ``time.monotonic_ns`` and ``bpf_ktime_get_ns`` read). ftrace records an
event whatever BPF programs run: it is not subject to their recursion rules.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.ebpf import kernel

# "  fio-20190   [001] .....   754.449686: block_rq_requeue: 254,0 RA () 38291232 + 1384 be,0,4 [0]"
_LINE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?"
                   r"(?P<rest>.*)$")


@dataclass(frozen=True)
class Event:
    ts_ns: int
    cpu: int
    name: str
    text: str


class Instance:
    def __init__(self, path: Path) -> None:
        self.path = path

    def enable(self, category: str, event: str, filter_expr: str = "") -> None:
        directory = self.path / "events" / category / event
        if filter_expr:
            (directory / "filter").write_text(filter_expr + "\n")
        (directory / "enable").write_text("1\n")

    def stop(self) -> None:
        (self.path / "tracing_on").write_text("0\n")

    def events(self) -> list[Event]:
        out = []
        for line in (self.path / "trace").read_text().splitlines():
            m = _LINE.match(line)
            if m is None:
                continue
            seconds, _, fraction = m["ts"].partition(".")
            ts = int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9])
            out.append(Event(ts, int(m["cpu"]), m["event"], m["rest"]))
        return out

    def overruns(self) -> int:
        """Events the buffer dropped (a reference with holes is no reference)."""
        total = 0
        for stats in (self.path / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("overrun", "dropped events"):
                    total += int(value.split()[0])
        return total


def ftrace_unavailable() -> str | None:
    root = kernel.tracefs_root()
    if root is None:
        return "tracefs is not mounted"
    if not (root / "instances").is_dir():
        return "tracefs has no instances directory"
    return None


@contextmanager
def instance(events: Sequence[tuple[str, str, str]], buffer_kb: int = 8192) -> Iterator[Instance]:
    """A fresh instance recording ``(category, event, filter)`` with the monotonic clock; removed on exit."""
    root = kernel.tracefs_root()
    assert root is not None, "tracefs is not mounted"
    path = root / "instances" / f"cme-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        inst = Instance(path)
        (path / "tracing_on").write_text("0\n")
        (path / "trace_clock").write_text("mono\n")
        (path / "buffer_size_kb").write_text(f"{buffer_kb}\n")
        for category, event, filter_expr in events:
            inst.enable(category, event, filter_expr)
        (path / "tracing_on").write_text("1\n")
        yield inst
    finally:
        (path / "tracing_on").write_text("0\n")
        for category, event, _ in events:
            (path / "events" / category / event / "enable").write_text("0\n")
        # The kernel refuses to remove an instance that is still being read.
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
