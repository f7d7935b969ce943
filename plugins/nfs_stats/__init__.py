"""nfs_stats: per-volume NFS client statistics from ``/proc/1/mountstats``.

One plugin replaces the seed's three mountstats collectors (RPC stats,
per-transport lanes, mount events); it reads the file once per scrape and
keeps each seed collector's error counter.
"""

from __future__ import annotations

from crusoe_metrics_exporter.plugins.nfs_stats.metrics import METRICS
from crusoe_metrics_exporter.sdk import Collector, ConfigOption, PluginContext, PluginSpec, Support, hookimpl

__version__ = "1.0.0"

OPTIONS = (
    ConfigOption(
        "mountstats_path",
        "path",
        "",
        "mountstats file to read; empty means HOST_PROC_PATH/1/mountstats (the host's mount namespace).",
        env="MOUNTSTATS_PATH",
    ),
    ConfigOption(
        "operations",
        "str_list",
        ["READ", "WRITE"],
        "Per-op lines to report (kernel op names such as READ, WRITE, COMMIT, GETATTR); "
        "each becomes an nfs_operation label value in lower case.",
    ),
    ConfigOption(
        "unmatched_mounts",
        "str",
        "export",
        "NFS mounts whose device has no volume id: 'export' labels them volume_id=<server:/path>, "
        "'skip' leaves them out as the seed did.",
        choices=("export", "skip"),
    ),
    ConfigOption(
        "max_file_size",
        "int",
        32 * 1024 * 1024,
        "Bytes of mountstats read per scrape at most; a larger file is cut at the last whole mount and counted "
        "as an error.",
    ),
)


def _factory(ctx: PluginContext) -> Collector:
    from crusoe_metrics_exporter.plugins.nfs_stats.collector import NfsStatsCollector, valid_operation_name

    bad = [op for op in ctx.options.get("operations", []) if not valid_operation_name(op)]
    if bad:
        raise ValueError(f"[plugins.nfs_stats] operations: {', '.join(map(repr, bad))} is not an NFS op name")
    if int(ctx.options.get("max_file_size", 1)) < 4096:
        raise ValueError("[plugins.nfs_stats] max_file_size must be at least 4096 bytes")
    return NfsStatsCollector(ctx)


def _check_support(ctx: PluginContext) -> Support:
    from crusoe_metrics_exporter.plugins.nfs_stats.collector import mountstats_path
    from crusoe_metrics_exporter.sdk import read_limited, unreadable

    path = mountstats_path(ctx)
    try:
        # read_limited: a FIFO given as MOUNTSTATS_PATH must not hang start-up
        # in open(); it is refused like any other non-regular file.
        read_limited(path, 1)
    except OSError as exc:
        denied = unreadable(path, exc)
        if denied is not None:
            return Support.unsupported(denied.reason, fix=denied.fix, path=str(path))
        return Support.unsupported(f"cannot read {path}: {exc.strerror or type(exc).__name__}", path=str(path))
    return Support.ok(path=str(path))


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec:
    return PluginSpec(
        name="nfs_stats",
        version=__version__,
        description="NFS client RPC, transport-lane and mount-event statistics per volume from mountstats.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=OPTIONS,
    )
