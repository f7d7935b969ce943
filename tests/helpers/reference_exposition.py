"""prometheus_client's own families for a declaration and its samples: the reference the renderer must equal.

The exporter writes both exposition formats itself (core/textformat.py);
these builders express the same data the way prometheus_client models it,
so its generators produce the bytes ours must match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample as PromSample
from prometheus_client.utils import floatToGoString

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.naming import PREFIX


def family(spec: MetricSpec, samples: Sequence[Sample], openmetrics_clash: bool = False) -> Metric:
    """One prometheus_client family with the exposition the exporter promises for ``spec``."""
    full = PREFIX + spec.name
    names = spec.labels
    if spec.type == "histogram":
        fam = Metric(full, spec.help, "histogram")
        for s in samples:
            labels = dict(zip(names, s.labels, strict=True))
            assert isinstance(s.value, HistogramValue)
            running = 0
            bounds = [str(floatToGoString(b)) for b in spec.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
            for bound, count in zip(bounds, s.value.counts, strict=True):
                running += count
                fam.samples.append(PromSample(full + "_bucket", {**labels, "le": bound}, float(running), None, None))
            fam.samples.append(PromSample(full + "_count", labels, float(running), None, None))
            fam.samples.append(PromSample(full + "_sum", labels, float(s.value.sum), None, None))
        return fam
    if spec.type == "counter" and full.endswith("_total") and not openmetrics_clash:
        fam = Metric(full.removesuffix("_total"), spec.help, "counter")
    elif spec.type == "counter":
        # legacy_name without _total, or an OpenMetrics family-name clash: exact name, untyped.
        fam = Metric(full, spec.help, "unknown")
    else:
        fam = Metric(full, spec.help, spec.type)
    for s in samples:
        fam.samples.append(PromSample(full, dict(zip(names, s.labels, strict=True)), float(s.value), None, None))  # type: ignore[arg-type]
    return fam


def families(groups: Iterable[tuple[MetricSpec, Sequence[Sample]]], openmetrics: bool = False) -> list[Metric]:
    groups = list(groups)
    names = Counter(spec.name.removesuffix("_total") if spec.type == "counter" else spec.name for spec, _ in groups)
    out = []
    for spec, samples in groups:
        clash = openmetrics and spec.type == "counter" and names[spec.name.removesuffix("_total")] > 1
        out.append(family(spec, samples, clash))
    return out


class Families(Collector):
    """A fixed list of families, for prometheus_client's generators (they only call collect())."""

    def __init__(self, fams: Iterable[Metric]) -> None:
        self._families = list(fams)

    def collect(self) -> Iterable[Metric]:
        return self._families
