"""procstat: CPU steal time and runnable/blocked task counts from /proc/stat.

The Go exporter read these fields in two collectors, each with its own error
counter: CPU steal (steal time, procs_running) and I/O pressure
(procs_blocked). Both counters are kept, charged the same way; the PSI half
of the I/O pressure collector is the ``psi`` plugin.
"""

from __future__ import annotations

from crusoe_metrics_exporter.sdk import Collector, MetricSpec, NoOptions, PluginContext, PluginSpec, Support, hookimpl

CPU_ERRORS = "cpu_steal_collection_errors_total"
IO_ERRORS = "io_collection_errors_total"
CPU_STEAL = "cpu_steal_seconds_total"
PROCS_RUNNING = "procs_running"
PROCS_BLOCKED = "procs_blocked"

METRICS: tuple[MetricSpec, ...] = (
    # Names and help texts are the Go exporter's.
    MetricSpec.errors(CPU_ERRORS, "Total number of errors encountered during CPU steal collection."),
    MetricSpec.errors(IO_ERRORS, "Total number of errors encountered during I/O pressure collection."),
    MetricSpec(CPU_STEAL, "counter",
               "Cumulative time the guest vCPUs were runnable but not scheduled by the host, aggregated across "
               "vCPUs, from /proc/stat."),
    MetricSpec(PROCS_RUNNING, "gauge", "Number of runnable (R-state) tasks, from /proc/stat procs_running."),
    MetricSpec(PROCS_BLOCKED, "gauge",
               "Number of tasks in uninterruptible sleep (D-state), from /proc/stat procs_blocked."),
)


def _check_support(ctx: PluginContext[NoOptions]) -> Support:
    path = ctx.host_proc / "stat"
    if not path.is_file():
        return Support.unsupported(f"{path} does not exist", "HOST_PROC_PATH must be the host's /proc", path=str(path))
    return Support.ok(path=str(path))


def _factory(ctx: PluginContext[NoOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.procstat.collector import ProcStatCollector

    return ProcStatCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[NoOptions]:
    return PluginSpec(
        name="procstat",
        description="CPU steal time and runnable/blocked task counts from /proc/stat.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
    )
