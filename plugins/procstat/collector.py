"""procstat collector: one read of /proc/stat per scrape."""

from __future__ import annotations

import os

from crusoe_metrics_exporter.plugins.procstat import (
    CPU_ERRORS,
    CPU_STEAL,
    IO_ERRORS,
    PROCS_BLOCKED,
    PROCS_RUNNING,
)
from crusoe_metrics_exporter.plugins.procstat import parser as p
from crusoe_metrics_exporter.sdk import NoOptions, PluginContext, ProblemLog, Sample, read_limited

#: /proc/stat of a 1,000-CPU host with a megabyte intr line stays far below this.
READ_LIMIT = 64 << 20

#: Parser field -> (metric, the error counter its problems are charged to).
FIELD_METRICS = {
    p.STEAL: (CPU_STEAL, CPU_ERRORS),
    p.PROCS_RUNNING: (PROCS_RUNNING, CPU_ERRORS),
    p.PROCS_BLOCKED: (PROCS_BLOCKED, IO_ERRORS),
}


def user_hz() -> int:
    """Ticks per second of /proc/stat's CPU times (USER_HZ: 100 on every common architecture)."""
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


class ProcStatCollector:
    def __init__(self, ctx: PluginContext[NoOptions]) -> None:
        self._ctx = ctx
        self._path = ctx.host_proc / "stat"
        self._ticks_per_second = float(user_hz())
        self._problems = ProblemLog(ctx.log, str(self._path))

    def start(self) -> None:
        self._ctx.details["path"] = str(self._path)

    def stop(self) -> None:
        pass

    def collect(self) -> list[Sample]:
        try:
            content = read_limited(self._path, READ_LIMIT)
        except OSError as exc:
            # Both of the Go exporter's collectors counted an unreadable file.
            self._ctx.errors.inc(CPU_ERRORS)
            self._ctx.errors.inc(IO_ERRORS)
            self._problems.report(f"cannot read {self._path}: {exc.strerror or exc}")
            return []
        result = p.parse_stat(content.data)
        samples: list[Sample] = []
        for field, (metric, errors_metric) in FIELD_METRICS.items():
            if result.errors[field]:
                self._ctx.errors.inc(errors_metric, result.errors[field])
            value = result.values.get(field)
            if value is not None:
                scale = self._ticks_per_second if field == p.STEAL else 1.0
                samples.append(Sample(metric, (), value / scale))
        problems = list(result.problems)
        if content.truncated:
            problems.append(f"larger than {READ_LIMIT} bytes; the rest was ignored")
        self._problems.report(f"{self._path}: " + "; ".join(problems) if problems else "")
        return samples
