"""Example plugin: the host's uptime."""

from __future__ import annotations

from collections.abc import Iterable

from crusoe_exporter_uptime.parser import parse_uptime
from crusoe_metrics_exporter.sdk import MetricSpec, NoOptions, PluginContext, PluginSpec, Sample, Support, hookimpl

UPTIME = MetricSpec("uptime_seconds", "gauge", "Seconds since the host booted, from /proc/uptime.")
ERRORS = MetricSpec.errors("uptime_collection_errors_total", "Unreadable or malformed /proc/uptime reads.")


class UptimeCollector:
    def __init__(self, ctx: PluginContext[NoOptions]) -> None:
        self._path = ctx.host_proc / "uptime"
        self._ctx = ctx

    def start(self) -> None:
        pass

    def collect(self) -> Iterable[Sample]:
        try:
            seconds = parse_uptime(self._path.read_text())
        except (OSError, ValueError) as exc:
            # Counted and reported by the core; the scrape goes on.
            self._ctx.errors.inc()
            self._ctx.log.warning("cannot read %s: %s", self._path, exc)
            return []
        return [Sample(UPTIME.name, (), seconds)]

    def stop(self) -> None:
        pass


def _support(ctx: PluginContext[NoOptions]) -> Support:
    path = ctx.host_proc / "uptime"
    if not path.exists():
        return Support.unsupported(f"{path} does not exist", fix="set HOST_PROC_PATH to the host's /proc")
    return Support.ok(source=str(path))


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec:
    return PluginSpec(
        name="uptime",
        description="Host uptime from /proc/uptime (example third-party plugin).",
        metrics=(UPTIME, ERRORS),
        factory=UptimeCollector,
        check_support=_support,
    )
