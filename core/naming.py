"""Metric naming rules the core enforces on every plugin."""

from __future__ import annotations

import math
import re

from crusoe_metrics_exporter.contract import MetricSpec

PREFIX = "crusoe_vm_"

_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"le", "quantile"})
_RESERVED_SUFFIXES = ("_bucket", "_count", "_sum", "_created")

#: Names fixed by the seed exporter's README that break Prometheus naming
#: conventions. Dashboards and the README's PromQL use them verbatim, so they
#: are exposed exactly as spelt. These counters lack ``_total``; the core
#: exposes them with TYPE ``untyped`` (``unknown`` in OpenMetrics), because a
#: ``counter`` family would force a ``_total`` sample name in OpenMetrics and in
#: prometheus_client. ``rate()`` works on them unchanged.
SEED_COUNTERS_WITHOUT_TOTAL = frozenset(
    {
        "nfs_latency_seconds",
        "objectstore_connection_latency_seconds",
        "nfs_rpc_backlog",
        "nfs_xprt_backlog_utilization",
    }
)

#: Seed gauges whose names end in ``_total`` (the disk_usage "total size"
#: gauges). Exposed verbatim as gauges, for the same dashboards.
SEED_GAUGES_ENDING_IN_TOTAL = frozenset({"disk_bytes_total", "disk_inodes_total"})

#: Seed names in non-base units; kept for compatibility, listed so the
#: promtool lint test can tell a known exception from a new mistake.
SEED_NON_BASE_UNIT_NAMES = frozenset(
    {
        "nfs_rpc_rtt_ms_total",
        "nfs_rpc_exe_ms_total",
        "disk_read_time_ms_total",
        "disk_write_time_ms_total",
        "nvme_power_on_hours",
    }
)


#: Seed histograms whose names say "histogram" (promtool: "should not include
#: type"); the seed README's PromQL uses them.
SEED_NAMES_NAMING_THEIR_TYPE = frozenset(
    {"nfs_latency_histogram_seconds", "objectstore_connection_latency_histogram_seconds"}
)


class InvalidDeclaration(ValueError):
    """A plugin declared something the core will not expose."""


def exposed_name(spec: MetricSpec) -> str:
    return PREFIX + spec.name


def validate_metric_spec(spec: MetricSpec) -> None:
    """Raise InvalidDeclaration naming the first rule the spec breaks."""
    name = spec.name
    if name.startswith(PREFIX):
        raise InvalidDeclaration(f"metric {name!r}: declare it without the {PREFIX!r} prefix; the core adds it")
    if not _METRIC_NAME.match(name):
        raise InvalidDeclaration(f"metric {name!r}: not a valid Prometheus metric name")
    if not spec.help.strip():
        raise InvalidDeclaration(f"metric {name!r}: help text is required")
    if spec.type not in ("counter", "gauge", "histogram"):
        raise InvalidDeclaration(f"metric {name!r}: unknown type {spec.type!r}")
    if spec.type == "counter" and not name.endswith("_total") and name not in SEED_COUNTERS_WITHOUT_TOTAL:
        raise InvalidDeclaration(f"metric {name!r}: counter names must end in _total")
    if spec.type != "counter" and name.endswith("_total") and name not in SEED_GAUGES_ENDING_IN_TOTAL:
        raise InvalidDeclaration(f"metric {name!r}: only counters may end in _total")
    if name.endswith(_RESERVED_SUFFIXES):
        raise InvalidDeclaration(f"metric {name!r}: suffix is reserved for histogram/summary series")
    if name.endswith("_info") and spec.type != "gauge":
        # The info-metric convention (node_uname_info, the seed's nvme_info):
        # a gauge of value 1 whose labels carry the information.
        raise InvalidDeclaration(f"metric {name!r}: only an info gauge (value 1, facts in labels) may end in _info")
    seen: set[str] = set()
    for label in spec.labels:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise InvalidDeclaration(f"metric {name!r}: invalid label name {label!r}")
        if label in _RESERVED_LABELS:
            raise InvalidDeclaration(f"metric {name!r}: label {label!r} is reserved")
        if label in seen:
            raise InvalidDeclaration(f"metric {name!r}: label {label!r} declared twice")
        seen.add(label)
    if spec.type == "histogram":
        if not spec.buckets:
            raise InvalidDeclaration(f"metric {name!r}: a histogram needs bucket bounds")
        if any(not math.isfinite(b) for b in spec.buckets):
            raise InvalidDeclaration(f"metric {name!r}: bucket bounds must be finite (+Inf is implicit)")
        if list(spec.buckets) != sorted(set(spec.buckets)):
            raise InvalidDeclaration(f"metric {name!r}: bucket bounds must be strictly increasing")
    elif spec.buckets:
        raise InvalidDeclaration(f"metric {name!r}: only histograms take buckets")
    if spec.error_counter and (spec.type != "counter" or spec.labels):
        raise InvalidDeclaration(f"metric {name!r}: an error counter is a counter without labels")
