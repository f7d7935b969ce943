"""disk_usage: space and inodes of the host's disk filesystems, via statfs.

The mount table is the host's PID 1's (``HOST_PROC_PATH/1/mounts``) and
statfs goes through the host's root: ``HOST_ROOT_PATH`` when set (the host's
/ mounted into a container, node_exporter's ``--path.rootfs``), else
``HOST_PROC_PATH/1/root``, so a containerised exporter sees the host's
filesystems. statfs runs on a small thread pool with a
per-mount timeout: a hung filesystem is reported stuck, never blocks a scrape.
"""

from __future__ import annotations

from dataclasses import dataclass

from crusoe_metrics_exporter.plugins.disk_usage.parser import DEFAULT_DEVICE_INCLUDE
from crusoe_metrics_exporter.plugins.disk_usage.statfs import DEFAULT_MOUNT_TIMEOUT, DEFAULT_STAT_WORKERS
from crusoe_metrics_exporter.sdk import (
    Collector,
    MetricSpec,
    PluginContext,
    PluginSpec,
    Support,
    hookimpl,
    option,
)

#: statfs is cheap; more workers than this only multiplies threads.
MAX_STAT_WORKERS = 64

_LABELS = ("device", "mount_point")
#: The filesystem's total size is a gauge; the Go exporter named it ..._total and dashboards use that.
GO_TOTAL_GAUGE = "the Go exporter's gauge name (a filesystem's total size), used as is by its dashboards"

METRICS: tuple[MetricSpec, ...] = (
    # Names, labels and help texts of the first four are the seed's.
    MetricSpec("disk_bytes_used", "gauge", "Bytes currently used on disk filesystem", _LABELS),
    MetricSpec("disk_bytes_total", "gauge", "Total bytes on disk filesystem", _LABELS, legacy_name=GO_TOTAL_GAUGE),
    MetricSpec("disk_inodes_used", "gauge", "Inodes currently used on disk filesystem", _LABELS),
    MetricSpec("disk_inodes_total", "gauge", "Total inodes on disk filesystem", _LABELS,
               legacy_name=GO_TOTAL_GAUGE),
    MetricSpec("disk_bytes_available", "gauge",
               "Bytes available to unprivileged users on disk filesystem (df's Avail; excludes root-reserved blocks)",
               _LABELS),
    MetricSpec("disk_filesystem_readonly", "gauge", "1 if the disk filesystem is mounted read-only, else 0", _LABELS),
    MetricSpec("disk_mount_stuck", "gauge",
               "1 while a statfs on this mount has been blocked longer than mount_timeout (the mount is skipped "
               "until the call returns), else 0", _LABELS),
    MetricSpec.errors("disk_usage_collection_errors_total", "Total number of errors during disk usage collection"),
)

@dataclass(frozen=True)
class DiskUsageOptions:
    device_include: str = option(
        "regex", DEFAULT_DEVICE_INCLUDE,
        "Regular expression searched in a mount's source; only matching mounts are reported. Its named group "
        "'device', else its first group, else the source without /dev/ is the device label. Empty means every "
        "mount. The default is the seed's: virtio disks and their partitions.")
    device_exclude: str = option("regex", "", "Regular expression of mount sources never reported.")
    mount_point_exclude: str = option("regex", "", "Regular expression of mount points never reported.")
    mount_timeout: float = option(
        "duration", DEFAULT_MOUNT_TIMEOUT,
        "How long one statfs may take before its mount is marked stuck and skipped until the call returns "
        "(node_exporter's mount-timeout); 0 means the default. Capped so that 2.5 x mount_timeout fits in 80% "
        "of the collect timeout.", minimum=0.0, maximum=60.0)
    stat_workers: int = option("int", DEFAULT_STAT_WORKERS, "Threads running statfs in parallel.", minimum=1,
                               maximum=MAX_STAT_WORKERS)


def _check_support(ctx: PluginContext[DiskUsageOptions]) -> Support:
    mounts = ctx.host_proc / "1" / "mounts"
    if not mounts.is_file():
        return Support.unsupported(f"{mounts} does not exist: HOST_PROC_PATH must be the host's /proc")
    from crusoe_metrics_exporter.plugins.disk_usage.collector import resolve_statfs_root

    root = resolve_statfs_root(ctx.host_proc, ctx.host_root)
    if root.problem is not None:
        return Support.unsupported(root.problem.reason, fix=root.problem.fix, mounts=str(mounts))
    return Support.ok(mounts=str(mounts), statfs_root=root.note)


def _factory(ctx: PluginContext[DiskUsageOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.disk_usage.collector import DiskUsageCollector

    return DiskUsageCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[DiskUsageOptions]:
    return PluginSpec(
        name="disk_usage",
        description="Filesystem space and inodes of the host's disks (statfs with hung-mount protection).",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=DiskUsageOptions,
    )
