"""psi collector: reads cpu, memory and io pressure on every scrape."""

from __future__ import annotations

from crusoe_metrics_exporter.plugins.psi import ERRORS_METRIC, RESOURCES, ratio_metric, stall_metric
from crusoe_metrics_exporter.plugins.psi.parser import SCOPES, WINDOWS, parse_pressure
from crusoe_metrics_exporter.sdk import NoOptions, PluginContext, ProblemLog, Sample, read_limited

#: A pressure file is two lines of ~60 bytes; anything near this is damage.
READ_LIMIT = 4096
#: cpu has no "full" line before Linux 5.13; memory and io always have both.
REQUIRED_SCOPES = {"cpu": ("some",), "memory": SCOPES, "io": SCOPES}


class PsiCollector:
    def __init__(self, ctx: PluginContext[NoOptions]) -> None:
        self._ctx = ctx
        self._directory = ctx.host_proc / "pressure"
        self._problems = ProblemLog(ctx.log, str(self._directory))

    def start(self) -> None:
        self._ctx.details["path"] = str(self._directory)

    def stop(self) -> None:
        pass

    def collect(self) -> list[Sample]:
        samples: list[Sample] = []
        problems: list[str] = []
        for resource in RESOURCES:
            path = self._directory / resource
            try:
                content = read_limited(path, READ_LIMIT)
            except OSError as exc:
                self._ctx.errors.inc(ERRORS_METRIC)
                problems.append(f"cannot read {path}: {exc.strerror or exc}")
                continue
            result = parse_pressure(content.data, REQUIRED_SCOPES[resource])
            found = list(result.problems)
            if content.truncated:
                found.append(f"larger than {READ_LIMIT} bytes; the rest was ignored")
            if found:
                self._ctx.errors.inc(ERRORS_METRIC, result.errors + content.truncated)
                problems.append(f"{path}: " + "; ".join(found))
            ratio, stall = ratio_metric(resource), stall_metric(resource)
            for scope in SCOPES:
                values = result.scopes.get(scope)
                if values is None:
                    continue
                for window, value in zip(WINDOWS, values.ratios, strict=True):
                    if value is not None:
                        samples.append(Sample(ratio, (scope, window), value))
                if values.stall_seconds is not None:
                    samples.append(Sample(stall, (scope,), values.stall_seconds))
        self._problems.report("; ".join(problems))
        return samples
