"""Metric declarations of the nfs_stats plugin (names and help follow the seed)."""

from __future__ import annotations

from crusoe_metrics_exporter.sdk import MetricSpec

OP_LABELS = ("volume_id", "nfs_operation")
VOLUME_LABELS = ("volume_id",)
LANE_LABELS = ("volume_id", "xprt_idx")

STATS_ERRORS = "nfs_stats_collection_errors_total"
XPRT_ERRORS = "nfs_xprt_stats_collection_errors_total"
EVENTS_ERRORS = "nfs_mount_events_collection_errors_total"

# Per-op (seed nfs-stats collector).
RPC_COUNT = "nfs_rpc_count_total"
RPC_TIMEOUTS = "nfs_rpc_timeouts_total"
RPC_RTT_MS = "nfs_rpc_rtt_ms_total"
RPC_EXE_MS = "nfs_rpc_exe_ms_total"
BYTES_SENT = "nfs_bytes_sent_total"
BYTES_RECV = "nfs_bytes_recv_total"
RPC_BACKLOG = "nfs_rpc_backlog"

# Per lane (seed nfs-xprt collector).
XPRT_SENDS = "nfs_xprt_sends_total"
XPRT_RECVS = "nfs_xprt_recvs_total"
XPRT_CONNECTS = "nfs_xprt_connect_count_total"
XPRT_BAD_XIDS = "nfs_xprt_bad_xids_total"
XPRT_MAX_SLOTS = "nfs_xprt_max_slots"
XPRT_IDLE = "nfs_xprt_idle_seconds"
XPRT_BACKLOG = "nfs_xprt_backlog_utilization"

# Per mount (seed nfs-mount-events collector).
EVENT_METRICS = (
    "nfs_mount_congestion_wait_events_total",
    "nfs_mount_short_read_events_total",
    "nfs_mount_short_write_events_total",
    "nfs_mount_delay_events_total",
)
BYTES_METRICS = (
    "nfs_mount_normal_read_bytes_total",
    "nfs_mount_normal_write_bytes_total",
    "nfs_mount_direct_read_bytes_total",
    "nfs_mount_direct_write_bytes_total",
    "nfs_mount_server_read_bytes_total",
    "nfs_mount_server_write_bytes_total",
    "nfs_mount_read_pages_total",
    "nfs_mount_write_pages_total",
)
MOUNT_AGE = "nfs_mount_age_seconds"

#: Why names that break Prometheus' conventions are kept.
GO_NAME_IN_MS = "the Go exporter's name in milliseconds, used as is by its dashboards"
GO_NAME_WITHOUT_TOTAL = "the Go exporter's counter name without _total, used as is by its dashboards and PromQL"


def _counter(name: str, help: str, labels: tuple[str, ...], legacy_name: str = "") -> MetricSpec:
    return MetricSpec(name, "counter", help, labels, legacy_name=legacy_name)


def _gauge(name: str, help: str, labels: tuple[str, ...]) -> MetricSpec:
    return MetricSpec(name, "gauge", help, labels)


METRICS: tuple[MetricSpec, ...] = (
    # The first declared error counter is the one the core charges a failed
    # or timed-out collect to.
    MetricSpec.errors(STATS_ERRORS, "Total number of errors during NFS stats collection"),
    MetricSpec.errors(
        XPRT_ERRORS, "Total number of errors encountered while parsing xprt lines from mountstats."
    ),
    MetricSpec.errors(EVENTS_ERRORS, "Total errors parsing mount-level events/bytes/age lines from mountstats."),
    _counter(RPC_COUNT, "Total number of NFS RPC operations", OP_LABELS),
    _counter(RPC_TIMEOUTS, "Total number of NFS RPC timeouts", OP_LABELS),
    _counter(RPC_RTT_MS, "Total RTT time for NFS RPC operations in milliseconds", OP_LABELS, GO_NAME_IN_MS),
    _counter(RPC_EXE_MS, "Total execution time for NFS RPC operations in milliseconds", OP_LABELS, GO_NAME_IN_MS),
    _counter(BYTES_SENT, "Total bytes sent for NFS RPC operations", OP_LABELS),
    _counter(BYTES_RECV, "Total bytes received for NFS RPC operations", OP_LABELS),
    _counter(
        RPC_BACKLOG,
        "NFS RPC backlog utilization from xprt stats: cumulative backlog queue length summed over the "
        "mount's transports (lanes); divide its rate by the rate of sends for the average backlog per request",
        VOLUME_LABELS,
        GO_NAME_WITHOUT_TOTAL,
    ),
    _counter(
        XPRT_SENDS,
        "NFS RPC requests sent on this xprt (lane). rate()==0 with connect_count>0 indicates a dead lane.",
        LANE_LABELS,
    ),
    _counter(XPRT_RECVS, "NFS RPC replies received on this xprt (lane).", LANE_LABELS),
    _counter(
        XPRT_CONNECTS,
        "Number of TCP_ESTABLISHED transitions on this xprt (lane). NOT the number of connect attempts. "
        "A high count with sends==0 indicates an ESTABLISH-then-immediate-teardown pattern.",
        LANE_LABELS,
    ),
    _counter(
        XPRT_BAD_XIDS,
        "NFS RPC replies with mismatched XIDs on this xprt \u2014 out-of-order or corrupted-frame indicator.",
        LANE_LABELS,
    ),
    _gauge(
        XPRT_MAX_SLOTS,
        "High-water mark of the slot table size on this xprt. Stuck at 2 (kernel default) with no traffic = "
        "lane never used; expect this to rise to the slot-table-entries sysctl value on healthy lanes.",
        LANE_LABELS,
    ),
    _gauge(XPRT_IDLE, "Seconds since the last activity on this xprt.", LANE_LABELS),
    _counter(
        XPRT_BACKLOG,
        "Cumulative per-xprt backlog utilization. Differentiates lanes \u2014 useful when the volume-aggregate "
        "backlog metric is climbing and you want to localize which lane is queueing.",
        LANE_LABELS,
        GO_NAME_WITHOUT_TOTAL,
    ),
    _counter(
        EVENT_METRICS[0],
        "Per-mount count of times the NFS client waited on RPC congestion (events: index 19).",
        VOLUME_LABELS,
    ),
    _counter(
        EVENT_METRICS[1],
        "Per-mount count of read responses returning fewer bytes than requested (events: index 23).",
        VOLUME_LABELS,
    ),
    _counter(
        EVENT_METRICS[2],
        "Per-mount count of write responses returning fewer bytes than requested (events: index 24).",
        VOLUME_LABELS,
    ),
    _counter(
        EVENT_METRICS[3],
        "Per-mount count of requests the NFS client delayed and retried because the server asked it to wait "
        "(events: index 25): NFS4ERR_DELAY on NFSv4 and NFS3ERR_JUKEBOX on NFSv3 reads, writes and commits. "
        "Server back-pressure also shows as RPC timeouts (nfs_rpc_timeouts_total) and reconnects "
        "(nfs_xprt_connect_count_total).",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[0],
        "Per-mount bytes returned by page-cached read() syscalls (bytes: index 1).",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[1],
        "Per-mount bytes written by page-cached write() syscalls (bytes: index 2).",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[2],
        "Per-mount bytes returned by O_DIRECT read() syscalls (bytes: index 3). This is what fio --direct=1 consumes.",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[3],
        "Per-mount bytes written by O_DIRECT write() syscalls (bytes: index 4).",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[4],
        "Per-mount bytes actually fetched from the NFS server (bytes: index 5). "
        "Compare with normal_read_bytes to detect page-cache hit ratio.",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[5],
        "Per-mount bytes actually written to the NFS server (bytes: index 6).",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[6],
        "Per-mount count of pages read via readpage/readpages NFS ops (bytes: index 7).",
        VOLUME_LABELS,
    ),
    _counter(
        BYTES_METRICS[7],
        "Per-mount count of pages written via writepage/writepages NFS ops (bytes: index 8).",
        VOLUME_LABELS,
    ),
    _gauge(
        MOUNT_AGE,
        "Seconds since the NFS mount was established (mountstats `age:` field). Useful for distinguishing "
        "long-lived stuck mounts from freshly-mounted ones, and as a reset signal \u2014 drops to a small value "
        "indicate the mount was recreated.",
        VOLUME_LABELS,
    ),
)
