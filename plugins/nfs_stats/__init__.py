"""nfs_stats: per-volume NFS client statistics from ``/proc/1/mountstats``.

One plugin replaces the seed's three mountstats collectors (RPC stats,
per-transport lanes, mount events); it reads the file once per scrape and
keeps each seed collector's error counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crusoe_metrics_exporter.plugins.nfs_stats.metrics import METRICS
from crusoe_metrics_exporter.sdk import Collector, OptionError, PluginContext, PluginSpec, Support, hookimpl, option

_OPERATION = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class NfsStatsOptions:
    mountstats_path: str = option(
        "path", "", "mountstats file to read; empty means HOST_PROC_PATH/1/mountstats (the host's mount namespace).",
        env="MOUNTSTATS_PATH")
    operations: tuple[str, ...] = option(
        "str_list", ("READ", "WRITE"),
        "Per-op lines to report (kernel op names such as READ, WRITE, COMMIT, GETATTR); "
        "each becomes an nfs_operation label value in lower case.")
    unmatched_mounts: str = option(
        "str", "export",
        "NFS mounts whose device has no volume id: 'export' labels them volume_id=<server:/path>, "
        "'skip' leaves them out as the seed did.",
        choices=("export", "skip"))
    max_file_size: int = option(
        "int", 32 * 1024 * 1024,
        "Bytes of mountstats read per scrape at most; a larger file is cut at the last whole mount and counted "
        "as an error.",
        minimum=4096, maximum=1 << 30)

    def __post_init__(self) -> None:
        bad = [op for op in self.operations if not _OPERATION.fullmatch(op)]
        if bad:
            raise OptionError("operations", f"{bad[0]!r} is not an NFS operation name (letters, digits, _)")


def _factory(ctx: PluginContext[NfsStatsOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.nfs_stats.collector import NfsStatsCollector

    return NfsStatsCollector(ctx)


def _check_support(ctx: PluginContext[NfsStatsOptions]) -> Support:
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
def crusoe_metrics_exporter_plugin() -> PluginSpec[NfsStatsOptions]:
    return PluginSpec(
        name="nfs_stats",
        description="NFS client RPC, transport-lane and mount-event statistics per volume from mountstats.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=NfsStatsOptions,
    )
