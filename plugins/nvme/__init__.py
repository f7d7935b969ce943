"""nvme: NVMe controller identity and SMART / health log, per controller.

Controllers and their identity come from sysfs on a timer; each scrape reads
every controller's SMART log with the NVMe admin command Get Log Page, which
needs CAP_SYS_ADMIN. Metric names, labels and help texts are the Go
exporter's, plus the composite temperature and unsafe shutdowns.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.plugins.nvme.metrics import ERRORS as ERRORS_METRIC
from crusoe_metrics_exporter.plugins.nvme.metrics import METRICS
from crusoe_metrics_exporter.sdk import (
    Collector,
    PluginContext,
    PluginSpec,
    Support,
    grant_hint,
    has_capability,
    hookimpl,
    option,
    unreadable,
)

__all__ = ["ERRORS_METRIC", "METRICS", "NvmeOptions", "crusoe_metrics_exporter_plugin", "smart_timeout"]


@dataclass(frozen=True)
class NvmeOptions:
    sysfs_path: str = option("path", "/sys", "Root of sysfs; controllers are listed under <sysfs_path>/class/nvme.")
    dev_path: str = option("path", "/dev",
                           "Directory of the controllers' device nodes (/dev/nvme0, ...); in a container, the host's.")
    refresh_interval: float = option(
        "duration", 300.0,
        "How often controllers are rediscovered and their identity re-read, on a background timer (never in a "
        "scrape); a controller that disappears triggers a refresh at once.", minimum=1.0, maximum=24 * 3600.0)
    smart_timeout: float = option(
        "duration", 2.0,
        "How long a scrape waits for one controller's SMART log; one that has not answered is counted as an error "
        "and left out of that scrape. Capped at 80% of the collect timeout.", minimum=0.05, maximum=300.0)


ADMIN_FIX = grant_hint("CAP_SYS_ADMIN") + "; or disable the nvme plugin"


def smart_timeout(ctx: PluginContext[NvmeOptions]) -> float:
    return min(ctx.options.smart_timeout, 0.8 * ctx.collect_timeout)


#: How long the support check waits for the controllers' SMART logs (below the core's 10 s deadline).
SUPPORT_WAIT = 5.0


def _check_support(ctx: PluginContext[NvmeOptions]) -> Support:
    """Read every controller's SMART log as a scrape would; supported when at least one answers."""
    import time

    from crusoe_metrics_exporter.plugins.nvme.collector import SmartRead, read_smart_log
    from crusoe_metrics_exporter.plugins.nvme.sysfs import controller_names, read_controller

    sysfs, dev = Path(ctx.options.sysfs_path), Path(ctx.options.dev_path)
    try:
        names = controller_names(sysfs)
    except FileNotFoundError:
        names = []
    except OSError as exc:
        return Support.unsupported(f"cannot list {sysfs}/class/nvme: {exc.strerror or exc}")
    if not names:
        # Nothing to monitor is not a fault of the host: doctor does not count it as a failure.
        return Support.unconfigured(f"no NVMe controllers in {sysfs}/class/nvme",
                                    "nothing to monitor on this host; --disable nvme silences it")
    # Each controller on its own thread: one that hangs must not fail the check for the others.
    reads = [SmartRead(read_controller(sysfs, dev, name), read_smart_log) for name in names]
    deadline = time.monotonic() + SUPPORT_WAIT
    working: list[str] = []
    failing: list[str] = []
    refusals: list[Support] = []
    for read in reads:
        c = read.controller
        if not read.done.wait(max(0.0, deadline - time.monotonic())):
            refusal = Support.unsupported(f"{c.name}: the SMART log read did not return within {SUPPORT_WAIT:g}s")
        elif read.error is not None:
            refusal = _refusal(c.name, c.device, read.error)
        else:
            working.append(f"{c.name} ({c.identity.serial})")
            continue
        failing.append(c.name)
        refusals.append(refusal)
    if working:
        # The others show as errors on the counter and in the log, scrape by scrape.
        return Support.ok(answering=", ".join(working), failing=", ".join(failing) or "none")
    return refusals[0]


def _refusal(name: str, device: Path, error: Exception) -> Support:
    from crusoe_metrics_exporter.plugins.nvme.collector import CannotOpen

    if isinstance(error, CannotOpen):
        if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
            return Support.unsupported(f"{device} does not exist",
                                       "in a container, expose the host's NVMe controller devices (/dev/nvme0, ...)")
        denied = unreadable(device, error)
        if denied is not None:
            return Support.unsupported(denied.reason, denied.fix)
        return Support.unsupported(f"cannot open {device}: {error.strerror or error}")
    if isinstance(error, PermissionError):
        held = "holding it" if has_capability("CAP_SYS_ADMIN") else "without it"
        return Support.unsupported(
            f"reading the NVMe SMART log (admin command Get Log Page) needs CAP_SYS_ADMIN ({held})", ADMIN_FIX)
    return Support.unsupported(f"{name}: cannot read the SMART log: {error}")


def _factory(ctx: PluginContext[NvmeOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.nvme.collector import NvmeCollector

    return NvmeCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[NvmeOptions]:
    return PluginSpec(
        name="nvme",
        description="NVMe controller identity and SMART / health log: critical warnings, media errors, wear, "
        "spare, power-on hours, temperature, unsafe shutdowns.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=NvmeOptions,
    )
