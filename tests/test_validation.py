"""validate() keeps exactly the samples the rules accept, whichever of its paths a sample takes.

Most samples pass an inline check in validate's loop; anything it does not
pass goes to ``_matches``, the rule itself. The inline check must never let
through what the rule refuses, and the bookkeeping after it (duplicates,
the series limit) must be what it was: both are compared here with a plain
restatement of the rules over random, often malformed, samples.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.contract import HistogramValue, MetricSpec, Sample
from crusoe_metrics_exporter.runner import _matches, _why, validate

SPECS = {
    spec.name: spec
    for spec in (
        MetricSpec("reads_total", "counter", "Reads.", ("device",)),
        MetricSpec("queue", "gauge", "Queue.", ("device",)),
        MetricSpec("depth", "gauge", "Depth.", ("volume_id", "op")),
        MetricSpec("up", "gauge", "Up."),
        MetricSpec("wait_seconds", "histogram", "Wait.", ("device",), (0.1, 1.0)),
    )
}

label_values = st.one_of(
    st.sampled_from(["vda", "vdb", "read"]),
    st.text(max_size=3),  # non-ASCII and lone surrogates (not encodable) included
    st.integers(0, 3),
)
values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(10**307, 10**310),  # around the largest float
    st.floats(),  # NaN, infinities, -0.0
    st.sampled_from([True, "1", None, 1.7976931348623157e308]),
    st.builds(HistogramValue, st.tuples(*[st.integers(-1, 5)] * 3), st.floats()),
    st.builds(HistogramValue, st.tuples(st.integers(0, 5)), st.just(1.0)),
)
devices = st.sampled_from(["vda", "vdb", "vdc"])
samples = st.one_of(
    st.builds(
        Sample,
        st.sampled_from([*SPECS, "undeclared"]),
        st.one_of(st.lists(label_values, max_size=3).map(tuple), st.lists(label_values, max_size=2)),
        values,
    ),
    # Well-formed ones, so that duplicates and the series limit come up often.
    st.builds(lambda device, n: Sample("reads_total", (device,), n), devices, st.integers(0, 10)),
    st.builds(lambda device, x: Sample("depth", (device, "read"), x), devices, st.floats(-1e9, 1e9)),
)

# A bulk emitter's row: one labels tuple object shared by the samples of several metrics (checked once when good).
rows = st.builds(
    lambda labels, row_values: [Sample(name, labels, value) for name, value in zip(SPECS, row_values, strict=False)],
    st.one_of(st.tuples(devices), st.tuples(devices, st.sampled_from(["read", "write"])), st.tuples(label_values)),
    st.lists(st.one_of(st.integers(0, 10), values), min_size=1, max_size=len(SPECS)),
)


def reference(batch: list[Sample], limit: int | None) -> tuple[dict[str, list[Sample]], dict[tuple[str, str], int]]:
    kept: dict[str, list[Sample]] = {}
    seen: set[tuple[str, object]] = set()
    dropped: dict[tuple[str, str], int] = {}

    def drop(key: tuple[str, str]) -> None:
        dropped[key] = dropped.get(key, 0) + 1

    for name, labels, value in batch:
        spec = SPECS.get(name)
        if spec is None:
            drop(("?", "unknown_metric"))
        elif not _matches(spec, labels, value):
            drop((name, _why(spec, labels, value)))
        elif (name, labels) in seen:
            drop((name, "duplicate_series"))
        elif limit is not None and len(seen) == limit:
            drop((name, "series_limit"))
        else:
            seen.add((name, labels))
            kept.setdefault(name, []).append(Sample(name, labels, value))
    return kept, dropped


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(samples, rows), max_size=30), st.one_of(st.none(), st.integers(0, 8)))
def test_kept_and_dropped_are_what_the_rules_say(drawn: list[Sample | list[Sample]], limit: int | None) -> None:
    batch = [sample for item in drawn for sample in (item if isinstance(item, list) else [item])]
    # Repeats, so duplicates and the limit are exercised.
    batch = batch + batch[::2]
    kept, rejected = validate(batch, SPECS, limit)
    expected_kept, expected_dropped = reference(batch, limit)
    assert kept == expected_kept
    assert {key: r.count for key, r in rejected.items()} == expected_dropped
