"""nfs_latency: request latency and TCP retransmits towards NFS servers, from eBPF.

Watches TCP traffic to the NFS servers target discovery finds (the host's
NFS mounts and NFS_SERVER_IPS) on NFS_TARGET_PORTS, with stable tracepoints
where the kernel has them and kprobes otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from crusoe_metrics_exporter.sdk import Collector, MetricSpec, PluginContext, PluginSpec, Support, hookimpl, option

LABELS = ("protocol", "operation", "volume_id")
ERRORS = "nfs_latency_collection_errors_total"

#: Duplicated from parser.BUCKETS so that importing the plugin stays cheap; a
#: test keeps the two equal.
_BUCKETS = (
    0.0005, 0.000637, 0.000812, 0.001035, 0.001318, 0.00168, 0.002141, 0.002728, 0.003476, 0.004429,
    0.005644, 0.007192, 0.009165, 0.011679, 0.014882, 0.018963, 0.024165, 0.030792, 0.039238, 0.05,
)

METRICS = (
    MetricSpec(
        "nfs_latency_seconds",
        "counter",
        "NFS request latency in seconds, summed: from the first unanswered send on a connection to an NFS "
        "server to the first data received back.",
        LABELS,
        legacy_name="the Go exporter's counter name without _total, used as is by its dashboards and PromQL",
    ),
    MetricSpec("nfs_requests_total", "counter", "Total number of NFS requests (send/receive exchanges).", LABELS),
    MetricSpec(
        "nfs_tcp_retransmits_total",
        "counter",
        "Total number of TCP segments retransmitted to NFS servers (as the kernel's TcpRetransSegs counts them).",
        LABELS,
    ),
    MetricSpec(
        "nfs_latency_histogram_seconds",
        "histogram",
        "Histogram of NFS request latency in seconds.",
        LABELS,
        buckets=_BUCKETS,
        legacy_name="the Go exporter's histogram name (it names its type), used as is by its dashboards and PromQL",
    ),
    MetricSpec.errors(
        ERRORS,
        "Problems reading the NFS latency maps or programming the kernel filter (malformed entries, failed "
        "filter updates, addresses that did not fit into the filter).",
    ),
)

@dataclass(frozen=True)
class NfsLatencyOptions:
    series_retention: float = option(
        "duration", 3600.0,
        "How long a volume_id series stays exported after its server address stopped being a target.",
        minimum=0.0, maximum=7 * 24 * 3600.0)
    latency_clamp: float = option(
        "duration", 60.0, "Longest latency recorded; longer samples count at this value.", minimum=0.001,
        maximum=3600.0)
    inflight_capacity: int = option(
        "int", 16384, "Sockets tracked at once (LRU: the least recent is evicted).", minimum=1, maximum=1 << 20)
    idle_series: bool = option(
        "bool", False,
        "Export zero-valued series for a volume that has had no traffic yet; off, its series appear with its first "
        "request.")


def _check(ctx: PluginContext[NfsLatencyOptions]) -> Support:
    from crusoe_metrics_exporter.plugins._tcptrace.collector import ebpf_support

    support = ebpf_support(ctx, "nfs_latency")
    if not support.supported:
        return support
    ports = ",".join(str(p) for p in ctx.targets.nfs_ports)
    return Support.ok(ports=ports, **dict(support.details))


def _factory(ctx: PluginContext[NfsLatencyOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.nfs_latency.collector import NfsLatencyCollector

    return NfsLatencyCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[NfsLatencyOptions]:
    return PluginSpec(
        name="nfs_latency",
        description="NFS request latency and TCP retransmits per volume, from TCP tracepoints (eBPF).",
        metrics=METRICS,
        factory=_factory,
        check_support=_check,
        options=NfsLatencyOptions,
    )
