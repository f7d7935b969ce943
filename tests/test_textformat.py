"""The direct text renderer writes exactly what prometheus_client would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.exposition import FamiliesCollector, Scrape, family, render

label_names = st.lists(st.sampled_from(["device", "volume_id", "zone", "op", "a", "mount_point", "xprt_idx"]),
                       max_size=4, unique=True)
label_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e20),
                    st.integers(min_value=0, max_value=2**64 - 1).map(float))


@st.composite
def group(draw: st.DrawFn) -> tuple[MetricSpec, list[Sample]]:
    kind = draw(st.sampled_from(["counter", "gauge", "histogram", "seed"]))
    names = tuple(draw(label_names))
    rows = draw(st.lists(st.tuples(*[label_values for _ in names]), max_size=5, unique=True))
    if kind == "histogram":
        bounds = tuple(sorted(set(draw(st.lists(st.floats(min_value=1e-6, max_value=1e7), min_size=1, max_size=4)))))
        spec = MetricSpec("thing_seconds", "histogram", "Help with \\ and\nnewline.", names, bounds)
        samples = [Sample(spec.name, row, HistogramValue(
            tuple(draw(st.lists(st.integers(0, 10**12), min_size=len(bounds) + 1, max_size=len(bounds) + 1))),
            draw(numbers))) for row in rows]
    elif kind == "seed":
        spec = MetricSpec("nfs_latency_seconds", "counter", "Seed counter.", names)
        samples = [Sample(spec.name, row, draw(numbers)) for row in rows]
    else:
        name = "thing_events_total" if kind == "counter" else "thing_value"
        spec = MetricSpec(name, kind, 'Quote " in help.', names)  # type: ignore[arg-type]
        samples = [Sample(spec.name, row, draw(numbers)) for row in rows]
    return spec, samples


@settings(max_examples=300, deadline=None)
@given(st.lists(group(), max_size=3))
def test_same_bytes_as_prometheus_client(groups: list[tuple[MetricSpec, list[Sample]]]) -> None:
    scrape = Scrape(groups=list(groups))
    ours = render(scrape)
    theirs = generate_latest(FamiliesCollector([family(spec, samples) for spec, samples in groups]))
    assert ours == theirs


def test_large_values_use_go_exponent_form() -> None:
    spec = MetricSpec("thing_bytes_total", "counter", "Bytes.")
    out = render(Scrape(groups=[(spec, [Sample(spec.name, (), 668458611456.0)])])).decode()
    assert "crusoe_vm_thing_bytes_total 6.68458611456e+11" in out
