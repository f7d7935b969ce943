"""kernel_lockups: the kernel's lockup and stall reports, counted from /dev/kmsg.

The Go exporter's unmerged soft-lockup collector counted records whose text
contains "soft lockup"; this plugin keeps its counter name and counts hard
lockups, hung tasks and RCU stalls too, as values of the label ``kind``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.sdk import (
    Collector,
    MetricSpec,
    PluginContext,
    PluginSpec,
    Support,
    grant_hint,
    hookimpl,
    option,
)

LOCKUPS_METRIC = "kernel_soft_lockups_total"
ERRORS_METRIC = "kernel_soft_lockup_collection_errors_total"

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec.errors(ERRORS_METRIC, "Total number of errors encountered while reading /dev/kmsg (records the "
                      "kernel overwrote before they were read, unreadable records, reopens)."),
    MetricSpec(
        LOCKUPS_METRIC,
        "counter",
        "Kernel lockup and stall reports read from /dev/kmsg since the exporter started, by kind: soft_lockup "
        "('soft lockup', the Go exporter's count), hard_lockup ('hard LOCKUP'), hung_task ('task ... blocked for "
        "more than N seconds'), rcu_stall ('rcu_... detected stalls').",
        ("kind",),
    ),
)

@dataclass(frozen=True)
class KernelLockupsOptions:
    kmsg_path: str = option("path", "/dev/kmsg",
                            "The kernel log device to read (a container needs the host's /dev/kmsg).")

SYSLOG_FIX = grant_hint("CAP_SYSLOG") + ", or disable the kernel_lockups plugin"


def kmsg_path(ctx: PluginContext[KernelLockupsOptions]) -> Path:
    return Path(ctx.options.kmsg_path or "/dev/kmsg")


def _check_support(ctx: PluginContext[KernelLockupsOptions]) -> Support:
    from crusoe_metrics_exporter.plugins.kernel_lockups.reader import open_kmsg

    path = kmsg_path(ctx)
    try:
        os.close(open_kmsg(path))
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return Support.unsupported(
                f"reading {path} needs CAP_SYSLOG (kernel.dmesg_restrict=1 on this host)", SYSLOG_FIX, path=str(path))
        if exc.errno == errno.ENOENT:
            return Support.unsupported(
                f"{path} does not exist", "in a container, mount the host's /dev/kmsg (hostPath, type CharDevice) "
                "and allow the character device 1:11", path=str(path))
        return Support.unsupported(f"cannot read {path}: {exc.strerror or exc}", SYSLOG_FIX, path=str(path))
    return Support.ok(path=str(path))


def _factory(ctx: PluginContext[KernelLockupsOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.kernel_lockups.collector import LockupCollector

    return LockupCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[KernelLockupsOptions]:
    return PluginSpec(
        name="kernel_lockups",
        description="Kernel soft/hard lockup, hung-task and RCU-stall reports, counted from /dev/kmsg by a "
        "background reader.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=KernelLockupsOptions,
    )
