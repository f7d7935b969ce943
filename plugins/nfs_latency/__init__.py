"""nfs_latency: NFS request latency per volume, per RPC where the kernel's RPC layer can be traced.

Two eBPF programs. On the RPC layer (sunrpc tracepoints, present once the
kernel's NFS client is loaded): per mount and per NFS operation, histograms
of each RPC's round trip, execute and queue time, errors and
retransmissions - the figures mountstats sums, as distributions. On TCP
(stable tracepoints where the kernel has them, kprobes otherwise):
retransmissions to the NFS servers target discovery finds, and, until the
RPC layer is traced, request latency per send/receive alternation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crusoe_metrics_exporter.sdk import (
    Collector,
    MetricSpec,
    OptionError,
    PluginContext,
    PluginSpec,
    Support,
    hookimpl,
    option,
)

LABELS = ("protocol", "operation", "volume_id")
RPC_LABELS = ("volume_id", "nfs_operation")
ERRORS = "nfs_latency_collection_errors_total"

#: Duplicated from parser.BUCKETS so that importing the plugin stays cheap; a
#: test keeps the two equal.
_BUCKETS = (
    0.0005, 0.000637, 0.000812, 0.001035, 0.001318, 0.00168, 0.002141, 0.002728, 0.003476, 0.004429,
    0.005644, 0.007192, 0.009165, 0.011679, 0.014882, 0.018963, 0.024165, 0.030792, 0.039238, 0.05,
)

#: Duplicated from rpc_parser.RPC_BUCKETS (1, 1.5, 2, 3, 5, 7 per decade, 50 us .. 60 s); a test keeps them equal.
_RPC_BUCKETS = (
    5e-05, 7e-05, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.0007, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.007,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0,
    15.0, 20.0, 30.0, 50.0, 60.0,
)
#: Operations reported per mount by default: the data path and the metadata calls that dominate it.
DEFAULT_OPERATIONS = ("READ", "WRITE", "COMMIT", "GETATTR", "LOOKUP", "ACCESS")
#: ``operations = ["*"]``: every operation the kernel performs.
ALL_OPERATIONS = "*"
_OPERATION = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,22}")

METRICS = (
    MetricSpec(
        "nfs_latency_seconds",
        "counter",
        "NFS request latency in seconds, summed: each RPC's round trip where the RPC layer is traced "
        "(nfs_latency_source{source=\"rpc\"}), else from the first unanswered send on a connection to an NFS "
        "server to the first data received back.",
        LABELS,
        legacy_name="the Go exporter's counter name without _total, used as is by its dashboards and PromQL",
    ),
    MetricSpec(
        "nfs_requests_total",
        "counter",
        "Total number of NFS requests: RPCs where the RPC layer is traced, else TCP send/receive exchanges.",
        LABELS,
    ),
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
    MetricSpec(
        "nfs_latency_source",
        "gauge",
        "Which source feeds nfs_latency_seconds, nfs_requests_total and nfs_latency_histogram_seconds: rpc (one "
        "per RPC, per mount, from the kernel's RPC layer) or tcp (per TCP send/receive alternation, per server).",
        ("source",),
    ),
    MetricSpec(
        "nfs_rpc_rtt_seconds",
        "histogram",
        "NFS RPC round trip per mount and operation in seconds: from transmitting the request to receiving the "
        "reply (the kernel's per-RPC rtt that mountstats sums).",
        RPC_LABELS,
        buckets=_RPC_BUCKETS,
    ),
    MetricSpec(
        "nfs_rpc_execute_seconds",
        "histogram",
        "NFS RPC execute time per mount and operation in seconds: from the RPC task's start to its completion, "
        "queueing, retransmissions and reply processing included (mountstats' execute).",
        RPC_LABELS,
        buckets=_RPC_BUCKETS,
    ),
    MetricSpec(
        "nfs_rpc_queue_seconds",
        "histogram",
        "NFS RPC queue time per mount and operation in seconds: from the RPC task's start to its first "
        "transmission, 0 for an RPC never transmitted (mountstats' queue/backlog).",
        RPC_LABELS,
        buckets=_RPC_BUCKETS,
    ),
    MetricSpec(
        "nfs_rpc_errors_total",
        "counter",
        "NFS RPCs per mount and operation that completed with an error status (mountstats' errors column).",
        RPC_LABELS,
    ),
    MetricSpec(
        "nfs_rpc_retransmits_total",
        "counter",
        "Retransmissions of NFS RPC requests per mount and operation (mountstats' transmissions minus operations).",
        RPC_LABELS,
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
        "int", 16384,
        "Sockets tracked at once (rounded up to a power of two, in sets of four: a socket finding its set full "
        "evicts an idle one, else the one waiting longest).", minimum=1, maximum=1 << 20)
    idle_series: bool = option(
        "bool", False,
        "Export zero-valued series for a volume that has had no traffic yet; off, its series appear with its first "
        "request.")
    latency_source: str = option(
        "str", "auto",
        "auto: per-RPC figures from the kernel's RPC layer once its tracepoints exist (TCP-level until then); "
        "tcp: TCP-level only, no RPC-layer program.",
        choices=("auto", "tcp"))
    operations: tuple[str, ...] = option(
        "str_list", DEFAULT_OPERATIONS,
        "NFS operations reported per mount in the nfs_rpc_* families (kernel names such as READ, WRITE, GETATTR; "
        "lower case in the nfs_operation label); [\"*\"] reports every operation the kernel performs.")
    rpc_capacity: int = option(
        "int", 1024, "(RPC client, operation) pairs the kernel counts at once, ~1.2 KiB of kernel memory each.",
        minimum=16, maximum=1 << 20)
    probe_timeout: float = option(
        "duration", 10.0, "Longest wait for the statfs() that tells which RPC client serves a new NFS mount.",
        minimum=0.1, maximum=600.0)
    unmatched_mounts: str = option(
        "str", "export",
        "NFS mounts whose device has no volume id: 'export' labels them volume_id=<server:/path> (as nfs_stats "
        "does), 'skip' leaves them out of the per-RPC families.",
        choices=("export", "skip"))

    def __post_init__(self) -> None:
        bad = [op for op in self.operations if op != ALL_OPERATIONS and not _OPERATION.fullmatch(op)]
        if bad:
            raise OptionError("operations", f"{bad[0]!r} is not an NFS operation name (letters, digits, _; or \"*\")")


def _check(ctx: PluginContext[NfsLatencyOptions]) -> Support:
    from crusoe_metrics_exporter.plugins._tcptrace.collector import ebpf_support

    support = ebpf_support(ctx, "nfs_latency")
    if not support.supported:
        return support
    ports = ",".join(str(p) for p in ctx.targets.nfs_ports)
    return Support.ok(ports=ports, rpc_layer=_rpc_layer(ctx), **dict(support.details))


def _rpc_layer(ctx: PluginContext[NfsLatencyOptions]) -> str:
    if ctx.options.latency_source != "auto":
        return "off (latency_source = tcp)"
    from crusoe_metrics_exporter.plugins.nfs_latency.rpc_source import rpc_layer_available

    if rpc_layer_available():
        return "sunrpc tracepoints present: per-RPC latency per mount"
    return "pending: no sunrpc tracepoints yet (loaded with the first NFS mount); TCP-level until then"


def _factory(ctx: PluginContext[NfsLatencyOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.nfs_latency.collector import NfsLatencyCollector

    return NfsLatencyCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[NfsLatencyOptions]:
    return PluginSpec(
        name="nfs_latency",
        description="NFS latency per RPC, volume and operation from the RPC layer, TCP retransmits per server (eBPF).",
        metrics=METRICS,
        factory=_factory,
        check_support=_check,
        options=NfsLatencyOptions,
    )
