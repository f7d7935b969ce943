"""objstore: bytes, retransmits and connection-phase latency towards the object store, from eBPF.

Endpoints come from target discovery: OBJSTORE_ENDPOINT_FQDN (A and AAAA,
re-resolved in the background), else OBJSTORE_ENDPOINT_IPS; ports from
OBJSTORE_ENDPOINT_PORT. There is no built-in fallback endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from crusoe_metrics_exporter.sdk import Collector, MetricSpec, PluginContext, PluginSpec, Support, hookimpl, option

LABELS = ("endpoint",)
ERRORS = "objstore_collection_errors_total"

#: Duplicated from parser.BUCKETS so that importing the plugin stays cheap; a
#: test keeps the two equal.
_BUCKETS = (
    0.001, 0.001468, 0.002154, 0.003162, 0.004642, 0.006813, 0.01, 0.014678, 0.021544, 0.031623,
    0.046416, 0.068129, 0.1, 0.14678, 0.215443, 0.316228, 0.464159, 0.681292, 1.0, 1.468,
)

METRICS = (
    MetricSpec(
        "objectstore_connection_latency_seconds",
        "counter",
        "Object store connection-phase latency in seconds, summed (first send of an exchange to its last "
        "receive, per connection).",
        LABELS,
        legacy_name="the Go exporter's counter name without _total, used as is by its dashboards and PromQL",
    ),
    MetricSpec(
        "objectstore_connections_total",
        "counter",
        "Total number of object store connection phases (request/response exchanges) observed.",
        LABELS,
    ),
    MetricSpec(
        "objectstore_tcp_retransmits_total",
        "counter",
        "Total number of TCP segments retransmitted to object store servers (as the kernel's TcpRetransSegs "
        "counts them).",
        LABELS,
    ),
    MetricSpec(
        "objectstore_bytes_sent_total", "counter", "Total bytes sent to object store servers (TCP payload).", LABELS
    ),
    MetricSpec(
        "objectstore_bytes_recv_total",
        "counter",
        "Total bytes received from object store servers (TCP payload).",
        LABELS,
    ),
    MetricSpec(
        "objectstore_connection_latency_histogram_seconds",
        "histogram",
        "Histogram of object store connection-phase latency in seconds.",
        LABELS,
        buckets=_BUCKETS,
        legacy_name="the Go exporter's histogram name (it names its type), used as is by its dashboards and PromQL",
    ),
    MetricSpec.errors(
        ERRORS,
        "Problems reading the object store maps or programming the kernel filter (malformed entries, failed "
        "filter updates, addresses that did not fit into the filter).",
    ),
)

@dataclass(frozen=True)
class ObjstoreOptions:
    series_retention: float = option(
        "duration", 3600.0,
        "How long an endpoint series stays exported after its address stopped being an endpoint (DNS rotation).",
        minimum=0.0, maximum=7 * 24 * 3600.0)
    latency_clamp: float = option(
        "duration", 600.0, "Longest phase recorded; longer phases count at this value.", minimum=0.001,
        maximum=3600.0)
    inflight_capacity: int = option(
        "int", 65536,
        "Connections tracked at once (rounded up to a power of two, in sets of four: a connection finding its set "
        "full evicts the one whose phase began longest ago).", minimum=1, maximum=1 << 20)
    idle_series: bool = option(
        "bool", False,
        "Export zero-valued series for an endpoint that has had no traffic yet; off, its series appear with its first "
        "request.")


def _check(ctx: PluginContext[ObjstoreOptions]) -> Support:
    targets = ctx.targets
    if not targets.objstore_configured:
        return Support.unconfigured(
            "no endpoint configured", fix="set OBJSTORE_ENDPOINT_FQDN or OBJSTORE_ENDPOINT_IPS"
        )
    from crusoe_metrics_exporter.plugins._tcptrace.collector import ebpf_support

    support = ebpf_support(ctx, "objstore")
    if not support.supported:
        return support
    ports = ",".join(str(p) for p in targets.objstore_ports)
    return Support.ok(ports=ports, **dict(support.details))


def _factory(ctx: PluginContext[ObjstoreOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.objstore.collector import ObjstoreCollector

    return ObjstoreCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[ObjstoreOptions]:
    return PluginSpec(
        name="objstore",
        description="Object store bytes, retransmits and connection-phase latency per endpoint (eBPF).",
        metrics=METRICS,
        factory=_factory,
        check_support=_check,
        options=ObjstoreOptions,
    )
