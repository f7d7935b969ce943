"""meminfo collector: MemAvailable and SwapTotal - SwapFree on every scrape."""

from __future__ import annotations

from crusoe_metrics_exporter.plugins.meminfo import ERRORS_METRIC, MEM_AVAILABLE, SWAP_USED
from crusoe_metrics_exporter.plugins.meminfo.parser import parse_meminfo
from crusoe_metrics_exporter.sdk import NoOptions, PluginContext, ProblemLog, Sample, read_limited

#: /proc/meminfo is ~1.5 KiB; the limit only guards against a runaway file.
READ_LIMIT = 1 << 20
WANTED = frozenset({"MemAvailable", "SwapTotal", "SwapFree"})


class MeminfoCollector:
    def __init__(self, ctx: PluginContext[NoOptions]) -> None:
        self._ctx = ctx
        self._path = ctx.host_proc / "meminfo"
        self._problems = ProblemLog(ctx.log, str(self._path))

    def start(self) -> None:
        self._ctx.details["path"] = str(self._path)

    def stop(self) -> None:
        pass

    def collect(self) -> list[Sample]:
        try:
            content = read_limited(self._path, READ_LIMIT)
        except OSError as exc:
            self._ctx.errors.inc(ERRORS_METRIC)
            self._problems.report(f"cannot read {self._path}: {exc.strerror or exc}")
            return []
        result = parse_meminfo(content.data, WANTED)
        errors = result.errors + content.truncated
        problems = list(result.problems)
        if content.truncated:
            problems.append(f"larger than {READ_LIMIT} bytes; the rest was ignored")
        values = result.values
        # A key that is absent is one error; a damaged one was counted by the parser.
        absent = sorted(WANTED - values.keys() - result.damaged)
        if absent:
            errors += len(absent)
            problems.append("no " + ", ".join(absent) + " line")
        samples: list[Sample] = []
        if "MemAvailable" in values:
            samples.append(Sample(MEM_AVAILABLE, (), float(values["MemAvailable"])))
        total, free = values.get("SwapTotal"), values.get("SwapFree")
        if total is not None and free is not None:
            if free <= total:
                samples.append(Sample(SWAP_USED, (), float(total - free)))
            else:
                errors += 1
                problems.append(f"SwapFree ({free}) exceeds SwapTotal ({total})")
        if errors:
            self._ctx.errors.inc(ERRORS_METRIC, errors)
        self._problems.report(f"{self._path}: " + "; ".join(problems) if problems else "")
        return samples
