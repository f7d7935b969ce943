"""Prototype of a direct text-format renderer, measured by procfs_bench.py.

Not used by the exporter. The benchmark shows the core's exposition (build
prometheus_client families, then ``generate_latest``) is most of a scrape
with tens of thousands of mountstats series; this writes the same text
format 0.0.4 straight from validated samples so the lead can weigh replacing
that path. Output is checked line-for-line against the core's renderer
(label order aside) by ``same_series``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.utils import floatToGoString

from crusoe_metrics_exporter.contract import MetricSpec, Sample
from crusoe_metrics_exporter.naming import PREFIX, SEED_COUNTERS_WITHOUT_TOTAL


def _escape_label(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_text(groups: Iterable[tuple[MetricSpec, Sequence[Sample]]]) -> bytes:
    """Counters and gauges only (histograms would keep the existing path)."""
    out: list[str] = []
    add = out.append
    for spec, samples in groups:
        full = PREFIX + spec.name
        kind = "untyped" if spec.name in SEED_COUNTERS_WITHOUT_TOTAL else spec.type
        add(f"# HELP {full} {_escape_help(spec.help)}\n# TYPE {full} {kind}\n")
        names = spec.labels
        for s in samples:
            if names:
                pairs = [f'{k}="{_escape_label(v)}"' for k, v in zip(names, s.labels, strict=True)]
                head = full + "{" + ",".join(pairs) + "} "
            else:
                head = full + " "
            v = s.value
            assert not isinstance(v, tuple)
            # repr() of a finite float is a valid text-format value (Prometheus
            # parses "4.1e+11" and "410000000000.0" alike); floatToGoString
            # only matters for Inf/NaN and costs three times as much.
            text = repr(float(v)) if type(v) is int else floatToGoString(v)
            add(head + text + "\n")
    return "".join(out).encode()


def same_series(a: bytes, b: bytes) -> bool:
    """Same samples and values, ignoring comment lines, label order and float spelling."""

    def norm(text: bytes) -> list[tuple[str, float]]:
        lines = []
        for line in text.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, value = line.rsplit(" ", 1)
            if "{" in name_labels:
                name, labels = name_labels.split("{", 1)
                name_labels = name + "{" + ",".join(sorted(labels.rstrip("}").split(","))) + "}"
            lines.append((name_labels, float(value)))
        return sorted(lines)

    return norm(a) == norm(b)
