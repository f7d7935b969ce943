"""meminfo: available memory and swap in use, from /proc/meminfo.

Names, help texts and the error counter are the Go exporter's (its memory
pressure collector); the PSI half of that collector is the ``psi`` plugin.
"""

from __future__ import annotations

from crusoe_metrics_exporter.sdk import Collector, MetricSpec, NoOptions, PluginContext, PluginSpec, Support, hookimpl

ERRORS_METRIC = "mem_collection_errors_total"
MEM_AVAILABLE = "mem_available_bytes"
SWAP_USED = "swap_used_bytes"

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec.errors(ERRORS_METRIC, "Total number of errors encountered during memory pressure collection."),
    MetricSpec(MEM_AVAILABLE, "gauge",
               "Memory available for new allocations without swapping, from /proc/meminfo MemAvailable."),
    MetricSpec(SWAP_USED, "gauge", "Swap currently in use (SwapTotal - SwapFree), from /proc/meminfo."),
)


def _check_support(ctx: PluginContext[NoOptions]) -> Support:
    path = ctx.host_proc / "meminfo"
    if not path.is_file():
        return Support.unsupported(f"{path} does not exist", "HOST_PROC_PATH must be the host's /proc", path=str(path))
    return Support.ok(path=str(path))


def _factory(ctx: PluginContext[NoOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.meminfo.collector import MeminfoCollector

    return MeminfoCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[NoOptions]:
    return PluginSpec(
        name="meminfo",
        description="Available memory and swap in use, from /proc/meminfo.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
    )
