"""nvme: NVMe controller identity and SMART / health log, per controller.

Controllers and their identity come from sysfs on a timer; each scrape reads
every controller's SMART log with the NVMe admin command Get Log Page, which
needs CAP_SYS_ADMIN. Metric names, labels and help texts are the Go
exporter's, plus the composite temperature and unsafe shutdowns.
"""

from __future__ import annotations

import os
from pathlib import Path

from crusoe_metrics_exporter.plugins.nvme.metrics import ERRORS as ERRORS_METRIC
from crusoe_metrics_exporter.plugins.nvme.metrics import METRICS
from crusoe_metrics_exporter.sdk import (
    Collector,
    ConfigOption,
    PluginContext,
    PluginSpec,
    Support,
    grant_hint,
    has_capability,
    hookimpl,
    unreadable,
)

VERSION = "1.0.0"

__all__ = ["ERRORS_METRIC", "METRICS", "crusoe_metrics_exporter_plugin", "smart_timeout"]

OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption("sysfs_path", "path", "/sys", "Root of sysfs; controllers are listed under <sysfs_path>/class/nvme."),
    ConfigOption("dev_path", "path", "/dev",
                 "Directory of the controllers' device nodes (/dev/nvme0, ...); in a container, the host's."),
    ConfigOption("refresh_interval", "duration", 300.0,
                 "How often controllers are rediscovered and their identity re-read, on a background timer "
                 "(never in a scrape); a controller that disappears triggers a refresh at once.", minimum=1.0),
    ConfigOption("smart_timeout", "duration", 2.0,
                 "How long a scrape waits for one controller's SMART log; one that has not answered is counted as "
                 "an error and left out of that scrape. Capped at 80% of the collect timeout.", minimum=0.05),
)

ADMIN_FIX = grant_hint("CAP_SYS_ADMIN") + "; or disable the nvme plugin"


def smart_timeout(ctx: PluginContext) -> float:
    collect_timeout = float(ctx.settings.core.get("collect_timeout", 5.0))
    return min(float(ctx.options.get("smart_timeout", 2.0)), 0.8 * collect_timeout)


def _check_support(ctx: PluginContext) -> Support:
    from crusoe_metrics_exporter.plugins.nvme.sysfs import controller_names

    sysfs = Path(str(ctx.options.get("sysfs_path") or "/sys"))
    dev = Path(str(ctx.options.get("dev_path") or "/dev"))
    try:
        names = controller_names(sysfs)
    except FileNotFoundError:
        names = []
    except OSError as exc:
        return Support.unsupported(f"cannot list {sysfs}/class/nvme: {exc.strerror or exc}")
    if not names:
        return Support.unsupported(f"no NVMe controllers in {sysfs}/class/nvme")
    answers = [_try_controller(sysfs, dev, name) for name in names]
    working = [detail for detail, refusal in answers if refusal is None]
    if working:
        # One failing controller never hides the others; the failures show as errors.
        failing = [name for name, (_, refusal) in zip(names, answers, strict=True) if refusal is not None]
        return Support.ok(controllers=", ".join(working), failing=", ".join(failing) or "none")
    refusal = answers[0][1]
    assert refusal is not None
    return refusal


def _try_controller(sysfs: Path, dev: Path, name: str) -> tuple[str, Support | None]:
    """Read one controller's SMART log as a scrape would: ("nvme0 (SERIAL)", None) or the refusal."""
    from crusoe_metrics_exporter.plugins.nvme.collector import open_controller, read_smart_log
    from crusoe_metrics_exporter.plugins.nvme.sysfs import read_controller

    controller = read_controller(sysfs, dev, name)
    try:
        fd = open_controller(controller)
    except FileNotFoundError:
        return "", Support.unsupported(f"{controller.device} does not exist",
                                       "in a container, expose the host's NVMe controller devices (/dev/nvme0, ...)")
    except OSError as exc:
        denied = unreadable(controller.device, exc)
        return "", Support.unsupported(denied.reason if denied else f"cannot open {controller.device}: {exc}",
                                       denied.fix if denied else "")
    try:
        read_smart_log(controller, fd)
    except PermissionError:
        held = "holding it" if has_capability("CAP_SYS_ADMIN") else "without it"
        return "", Support.unsupported(
            f"reading the NVMe SMART log (admin command Get Log Page) needs CAP_SYS_ADMIN ({held})", ADMIN_FIX)
    except (OSError, ValueError) as exc:
        return "", Support.unsupported(f"{name}: cannot read the SMART log: {exc}")
    finally:
        os.close(fd)
    return f"{name} ({controller.identity.serial})", None


def _factory(ctx: PluginContext) -> Collector:
    from crusoe_metrics_exporter.plugins.nvme.collector import NvmeCollector

    return NvmeCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec:
    return PluginSpec(
        name="nvme",
        version=VERSION,
        description="NVMe controller identity and SMART / health log: critical warnings, media errors, wear, "
        "spare, power-on hours, temperature, unsafe shutdowns.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
        options=OPTIONS,
    )
