"""Metric naming rules the core enforces on every plugin and service.

No name is special-cased here: a name that breaks a convention for a reason
says so on its own declaration (``MetricSpec.legacy_name``).
"""

from __future__ import annotations

import math
import re

from crusoe_metrics_exporter.contract import MetricSpec

PREFIX = "crusoe_vm_"

_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"le", "quantile"})
_RESERVED_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


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
    legacy = bool(spec.legacy_name.strip())
    if spec.type == "counter" and not name.endswith("_total") and not legacy:
        raise InvalidDeclaration(f"metric {name!r}: counter names must end in _total (or declare legacy_name with "
                                 "the reason the name is kept)")
    if spec.type != "counter" and name.endswith("_total") and not legacy:
        raise InvalidDeclaration(f"metric {name!r}: only counters may end in _total (or declare legacy_name with "
                                 "the reason the name is kept)")
    if name.endswith(_RESERVED_SUFFIXES):
        raise InvalidDeclaration(f"metric {name!r}: suffix is reserved for histogram/summary series")
    if name.endswith("_info") and spec.type != "gauge":
        # The info-metric convention (node_exporter's node_uname_info):
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
