"""Validated samples -> prometheus_client metric families -> text.

Plugins never build families; this module is the only place that knows how a
declaration becomes exposition, including the seed names that break the
conventions (see ``naming.SEED_COUNTERS_WITHOUT_TOTAL``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.samples import Sample as PromSample

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.histogram import cumulative_buckets
from crusoe_metrics_exporter.naming import PREFIX, SEED_COUNTERS_WITHOUT_TOTAL
from crusoe_metrics_exporter.textformat import render_groups

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def family(spec: MetricSpec, samples: Sequence[Sample]) -> Metric:
    """Build one family from a declaration and its (already validated) samples."""
    full = PREFIX + spec.name
    names = spec.labels
    if spec.type == "histogram":
        fam = Metric(full, spec.help, "histogram")
        for s in samples:
            labels = dict(zip(names, s.labels, strict=True))
            assert isinstance(s.value, HistogramValue)
            value = s.value
            for le, count in cumulative_buckets(spec.buckets, value):
                fam.samples.append(PromSample(full + "_bucket", {**labels, "le": le}, count, None, None))
            fam.samples.append(PromSample(full + "_count", labels, float(sum(value.counts)), None, None))
            fam.samples.append(PromSample(full + "_sum", labels, float(value.sum), None, None))
        return fam
    if spec.type == "counter" and spec.name in SEED_COUNTERS_WITHOUT_TOTAL:
        # Keep the seed's exact series name: an untyped family is exposed verbatim.
        fam = Metric(full, spec.help, "unknown")
        sample_name = full
    elif spec.type == "counter":
        fam = Metric(full.removesuffix("_total"), spec.help, "counter")
        sample_name = full
    else:
        fam = Metric(full, spec.help, "gauge")
        sample_name = full
    append = fam.samples.append
    for s in samples:
        append(PromSample(sample_name, dict(zip(names, s.labels, strict=True)), float(s.value), None, None))  # type: ignore[arg-type]
    return fam


@dataclass
class Scrape:
    """What one scrape gathered: plugin samples by declaration, and core-built families.

    Iterating yields everything as prometheus_client families (OpenMetrics,
    tests); ``render`` writes the plugin samples directly in text format.
    """

    groups: list[tuple[MetricSpec, Sequence[Sample]]] = field(default_factory=list)
    families: list[Metric] = field(default_factory=list)

    def __iter__(self) -> Iterator[Metric]:
        for spec, samples in self.groups:
            yield family(spec, samples)
        yield from self.families


class FamiliesCollector(PromCollector):
    """Adapts a fixed list of families to prometheus_client's generators."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(scrape: Scrape | Iterable[Metric], openmetrics: bool = False) -> bytes:
    if isinstance(scrape, Scrape) and not openmetrics:
        head = render_groups(scrape.groups).encode()
        return head + generate_latest(FamiliesCollector(scrape.families))
    if openmetrics:
        # Both generators only call .collect(); they are typed for a full registry.
        registry = FamiliesCollector(_without_clashes(scrape))
        return cast(bytes, generate_openmetrics(registry))  # type: ignore[no-untyped-call]
    return generate_latest(FamiliesCollector(scrape))


def _without_clashes(families: Iterable[Metric]) -> list[Metric]:
    """Make every OpenMetrics family name unique.

    An OpenMetrics counter family is named without ``_total``, so a seed
    counter ``x_seconds_total`` next to the histogram ``x_seconds`` would give
    two families named ``x_seconds`` - an invalid exposition. Such a counter
    is exposed as ``unknown`` under its full name (like the seed counters
    without ``_total``): every series keeps its exact name and value.
    """
    fams = list(families)
    names = Counter(f.name for f in fams)
    out = []
    for f in fams:
        if f.type == "counter" and names[f.name] > 1:
            renamed = Metric(f.name + "_total", f.documentation, "unknown")
            renamed.samples = list(f.samples)
            out.append(renamed)
        else:
            out.append(f)
    return out
