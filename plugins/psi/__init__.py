"""psi: CPU, memory and I/O pressure stall information from /proc/pressure.

The memory and I/O families keep the Go exporter's names, labels and help
texts; CPU pressure (which the Go exporter skipped) has the same shape. PSI
is host-wide: /proc/pressure is not namespaced, so a container with the
host's /proc mounted reads the host's pressure.
"""

from __future__ import annotations

import errno

from crusoe_metrics_exporter.sdk import (
    Collector,
    MetricSpec,
    NoOptions,
    PluginContext,
    PluginSpec,
    Support,
    hookimpl,
    read_limited,
)

RESOURCES = ("cpu", "memory", "io")
ERRORS_METRIC = "psi_collection_errors_total"

_RATIO_LABELS = ("scope", "window")
_STALL_LABELS = ("scope",)
#: How the help texts name each resource: (sentence start, object of "waiting on").
_WHAT = {"cpu": ("CPU", "CPU"), "memory": ("Memory", "memory"), "io": ("I/O", "I/O")}


def ratio_metric(resource: str) -> str:
    return f"psi_{resource}_ratio"


def stall_metric(resource: str) -> str:
    return f"psi_{resource}_stall_seconds_total"


def _declare(resource: str) -> tuple[MetricSpec, MetricSpec]:
    # The memory and io help texts are the Go exporter's, word for word.
    title, waiting = _WHAT[resource]
    return (
        MetricSpec(ratio_metric(resource), "gauge",
                   f"{title} pressure stall as a fraction (0-1) of the rolling window, per PSI scope.", _RATIO_LABELS),
        MetricSpec(stall_metric(resource), "counter",
                   f"Cumulative time tasks were stalled waiting on {waiting}, per PSI scope.", _STALL_LABELS),
    )


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec.errors(ERRORS_METRIC, "Total number of errors encountered while reading /proc/pressure."),
    *(spec for resource in RESOURCES for spec in _declare(resource)),
)

NO_PSI = "kernel without PSI (CONFIG_PSI or psi=0)"
NO_PSI_FIX = ("boot the kernel with psi=1 (kernels built with CONFIG_PSI_DEFAULT_DISABLED) or use a kernel with "
              "CONFIG_PSI=y; in a container, HOST_PROC_PATH must be the host's /proc")


def _check_support(ctx: PluginContext[NoOptions]) -> Support:
    directory = ctx.host_proc / "pressure"
    if not directory.is_dir():
        return Support.unsupported(NO_PSI, NO_PSI_FIX, path=str(directory))
    try:
        read_limited(directory / "memory", 4096)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            # Kernels before 5.x keep the files but refuse reads when psi=0.
            return Support.unsupported(NO_PSI, NO_PSI_FIX, path=str(directory))
        return Support.unsupported(f"cannot read {directory / 'memory'}: {exc.strerror or exc}",
                                   "HOST_PROC_PATH must be the host's /proc", path=str(directory))
    return Support.ok(path=str(directory))


def _factory(ctx: PluginContext[NoOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.psi.collector import PsiCollector

    return PsiCollector(ctx)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[NoOptions]:
    return PluginSpec(
        name="psi",
        description="CPU, memory and I/O pressure (PSI) from /proc/pressure: stall ratios over 10/60/300 s and "
        "cumulative stall time, per scope.",
        metrics=METRICS,
        factory=_factory,
        check_support=_check_support,
    )
