"""Prometheus text format 0.0.4 written straight from validated samples.

Building prometheus_client families (one dict per sample) and running its
generator was three quarters of a scrape with tens of thousands of
mountstats series. This writes the same bytes directly; a property test
checks it against prometheus_client's ``generate_latest`` for the same data.
OpenMetrics, asked for rarely, still goes through prometheus_client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from prometheus_client.utils import floatToGoString

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.naming import PREFIX, SEED_COUNTERS_WITHOUT_TOTAL


def _go_float(v: float) -> str:
    return str(floatToGoString(v))  # type: ignore[no-untyped-call]


def _value(v: float) -> str:
    # repr() is what floatToGoString returns for every finite value below 1e6
    # (Go switches to exponent form from seven integer digits on).
    if type(v) is float and -math.inf < v < 1e6:
        return repr(v)
    if type(v) is int and -1_000_000 < v < 1_000_000:
        return repr(float(v))
    return _go_float(v)


def _escape_label(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_order(names: Sequence[str]) -> list[int]:
    """Positions of the label values in the sorted-by-name order the format uses."""
    return sorted(range(len(names)), key=lambda i: names[i])


LabelCache = dict[tuple[tuple[str, ...], tuple[str, ...]], str]


def render_group(spec: MetricSpec, samples: Sequence[Sample], out: list[str], cache: LabelCache) -> None:
    """Append the lines of one family to ``out``.

    ``cache`` maps (label names, label values) to the rendered ``{...}``: the
    per-lane mountstats metrics share their label sets, so most are reused.
    """
    full = PREFIX + spec.name
    if spec.type == "counter" and spec.name in SEED_COUNTERS_WITHOUT_TOTAL:
        kind = "untyped"
    else:
        kind = spec.type
    out.append(f"# HELP {full} {_escape_help(spec.help)}\n# TYPE {full} {kind}\n")
    names = spec.labels
    order = _label_order(names)
    if spec.type == "histogram":
        _render_histogram(full, spec, samples, order, out)
        return
    add = out.append
    if not names:
        for s in samples:
            add(f"{full} {_value(s.value)}\n")  # type: ignore[arg-type]
        return
    keys = [f'{names[i]}="' for i in order]
    for s in samples:
        labels = s.labels
        rendered = cache.get((names, labels))
        if rendered is None:
            pairs = ",".join(keys[j] + _escape_label(labels[i]) + '"' for j, i in enumerate(order))
            rendered = cache[(names, labels)] = "{" + pairs + "} "
        add(f"{full}{rendered}{_value(s.value)}\n")  # type: ignore[arg-type]


def _render_histogram(full: str, spec: MetricSpec, samples: Sequence[Sample], order: list[int],
                      out: list[str]) -> None:
    names = spec.labels
    bounds = [_go_float(b) for b in spec.buckets] + ["+Inf"]
    # "le" takes its sorted place among the plugin's labels.
    le_at = sum(1 for n in names if n < "le")
    add = out.append
    for s in samples:
        value = s.value
        assert isinstance(value, HistogramValue)
        parts = [f'{names[i]}="{_escape_label(s.labels[i])}"' for i in order]
        before = ",".join(parts[:le_at])
        after = ",".join(parts[le_at:])
        head = f"{full}_bucket{{{before}{',' if before else ''}le=\""
        tail = f"\"{',' if after else ''}{after}}} "
        running = 0
        for bound, count in zip(bounds, value.counts, strict=True):
            running += count
            add(f"{head}{bound}{tail}{_value(float(running))}\n")
        plain = "{" + ",".join(parts) + "}" if parts else ""
        add(f"{full}_count{plain} {_value(float(running))}\n")
        add(f"{full}_sum{plain} {_value(float(value.sum))}\n")


def render_groups(groups: Iterable[tuple[MetricSpec, Sequence[Sample]]]) -> str:
    out: list[str] = []
    cache: LabelCache = {}
    for spec, samples in groups:
        render_group(spec, samples, out, cache)
    return "".join(out)
