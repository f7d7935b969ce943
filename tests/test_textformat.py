"""The renderer writes exactly what prometheus_client would, in both formats, from the one model."""

from __future__ import annotations

from typing import cast

from helpers.reference_exposition import Families, families
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.exposition import Scrape, render
from crusoe_metrics_exporter.textformat import LabelTexts

label_names = st.lists(st.sampled_from(["device", "volume_id", "zone", "op", "a", "mount_point", "xprt_idx"]),
                       max_size=4, unique=True)
label_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
# Plugins pass ints for counters (the renderer has its own paths for them) and floats for the rest.
numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e20),
                    st.integers(min_value=0, max_value=2**64 - 1).map(float),
                    st.integers(min_value=0, max_value=2**64 - 1),
                    st.integers(min_value=999_000, max_value=10**17))


@st.composite
def group(draw: st.DrawFn) -> tuple[MetricSpec, list[Sample]]:
    kind = draw(st.sampled_from(["counter", "gauge", "histogram", "legacy", "legacy_gauge", "clash"]))
    names = tuple(draw(label_names))
    rows = draw(st.lists(st.tuples(*[label_values for _ in names]), max_size=5, unique=True))
    if kind == "histogram":
        bounds = tuple(sorted(set(draw(st.lists(st.floats(min_value=1e-6, max_value=1e7), min_size=1, max_size=4)))))
        spec = MetricSpec("thing_seconds", "histogram", "Help with \\ and\nnewline.", names, bounds)
        samples = [Sample(spec.name, row, HistogramValue(
            tuple(draw(st.lists(st.integers(0, 10**12), min_size=len(bounds) + 1, max_size=len(bounds) + 1))),
            draw(numbers))) for row in rows]
    elif kind == "legacy":
        spec = MetricSpec("nfs_latency_seconds", "counter", "Seed counter.", names, legacy_name="the seed's")
        samples = [Sample(spec.name, row, draw(numbers)) for row in rows]
    elif kind == "legacy_gauge":
        spec = MetricSpec("disk_bytes_total", "gauge", "Seed gauge.", names, legacy_name="the seed's")
        samples = [Sample(spec.name, row, draw(numbers)) for row in rows]
    elif kind == "clash":
        # A counter whose OpenMetrics family name is the histogram's (thing_seconds).
        spec = MetricSpec("thing_seconds_total", "counter", "Summed seconds.", names)
        samples = [Sample(spec.name, row, draw(numbers)) for row in rows]
    else:
        name = "thing_events_total" if kind == "counter" else "thing_value"
        spec = MetricSpec(name, kind, 'Quote " in help.', names)  # type: ignore[arg-type]
        samples = [Sample(spec.name, row, draw(numbers)) for row in rows]
    return spec, samples


def _unique(groups: list[tuple[MetricSpec, list[Sample]]]) -> list[tuple[MetricSpec, list[Sample]]]:
    # One family per metric name, as in any real scrape.
    return list({spec.name: (spec, samples) for spec, samples in groups}.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(group(), max_size=4))
def test_same_bytes_as_prometheus_client(groups: list[tuple[MetricSpec, list[Sample]]]) -> None:
    groups = _unique(groups)
    ours = render(Scrape(groups=list(groups)))
    theirs = generate_latest(Families(families(groups)))
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(st.lists(group(), max_size=4))
def test_openmetrics_same_bytes_as_prometheus_client(groups: list[tuple[MetricSpec, list[Sample]]]) -> None:
    groups = _unique(groups)
    ours = render(Scrape(groups=list(groups)), openmetrics=True)
    theirs = cast(bytes, generate_openmetrics(Families(families(groups, openmetrics=True))))  # type: ignore[no-untyped-call]
    assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(st.lists(group(), max_size=4), st.lists(group(), max_size=4), st.booleans())
def test_label_sets_carried_from_the_last_rendering_change_no_byte(
        first: list[tuple[MetricSpec, list[Sample]]], second: list[tuple[MetricSpec, list[Sample]]],
        openmetrics: bool) -> None:
    # The server keeps the label sets one rendering wrote for the next; the
    # second scrape shares some label names and values with the first, the
    # rest are new, and its bytes must be what it would be on its own.
    first, second = _unique(first), _unique(second + first[:1])
    texts = LabelTexts()
    render(Scrape(groups=list(first)), openmetrics, texts)
    ours = render(Scrape(groups=list(second)), openmetrics, texts)
    assert ours == render(Scrape(groups=list(second)), openmetrics)
    if openmetrics:
        assert ours == generate_openmetrics(Families(families(second, openmetrics=True)))  # type: ignore[no-untyped-call]
    else:
        assert ours == generate_latest(Families(families(second)))


def test_label_sets_kept_are_only_those_of_the_last_rendering() -> None:
    spec = MetricSpec("thing_value", "gauge", "Thing.", ("volume_id",))
    texts = LabelTexts()
    render(Scrape(groups=[(spec, [Sample(spec.name, ("a",), 1.0), Sample(spec.name, ("b",), 2.0)])]), texts=texts)
    assert set(texts.last[("volume_id",)]) == {("a",), ("b",)}
    body = render(Scrape(groups=[(spec, [Sample(spec.name, ("b",), 3), Sample(spec.name, ('c"',), 4)])]), texts=texts)
    assert body == b'# HELP crusoe_vm_thing_value Thing.\n# TYPE crusoe_vm_thing_value gauge\n' \
                   b'crusoe_vm_thing_value{volume_id="b"} 3.0\ncrusoe_vm_thing_value{volume_id="c\\""} 4.0\n'
    # A volume gone from the host is gone from the memory with the next scrape.
    assert set(texts.last[("volume_id",)]) == {("b",), ('c"',)}


def test_large_values_use_go_exponent_form() -> None:
    spec = MetricSpec("thing_bytes_total", "counter", "Bytes.")
    out = render(Scrape(groups=[(spec, [Sample(spec.name, (), 668458611456.0)])])).decode()
    assert "crusoe_vm_thing_bytes_total 6.68458611456e+11" in out


def test_openmetrics_has_no_clashing_families_for_a_counter_next_to_its_histogram() -> None:
    # The seed pairs disk_read_latency_seconds_total (counter) with
    # disk_read_latency_seconds (histogram). In OpenMetrics a counter family
    # drops _total, so both families were named ..._seconds: invalid, and
    # prometheus_client's parser refused the whole exposition.
    from helpers.exporter_scrape import parse_openmetrics

    counter = MetricSpec("disk_read_latency_seconds_total", "counter", "Total time.", ("device",))
    histogram = MetricSpec("disk_read_latency_seconds", "histogram", "Latency.", ("device",), (0.1, 1.0))
    other = MetricSpec("disk_reads_total", "counter", "Reads.", ("device",))
    scrape = Scrape(groups=[
        (counter, [Sample(counter.name, ("vda",), 2.5)]),
        (histogram, [Sample(histogram.name, ("vda",), HistogramValue((1, 2, 3), 2.5))]),
        (other, [Sample(other.name, ("vda",), 6.0)]),
    ])
    body = render(scrape, openmetrics=True).decode()
    families = {f.name: f for f in parse_openmetrics(body)}
    series = {s.name: s.value for f in families.values() for s in f.samples}
    # Every series keeps its exact name and value.
    assert series["crusoe_vm_disk_read_latency_seconds_total"] == 2.5
    assert series["crusoe_vm_disk_read_latency_seconds_count"] == 6.0
    assert families["crusoe_vm_disk_read_latency_seconds"].type == "histogram"
    # A counter without a clash stays a counter.
    assert families["crusoe_vm_disk_reads"].type == "counter"
    # The text format has no clash and keeps the counter type.
    assert "# TYPE crusoe_vm_disk_read_latency_seconds_total counter\n" in render(scrape).decode()
