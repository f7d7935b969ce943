"""The exposition's number spelling against prometheus_client's, for every kind of value a sample carries."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.utils import floatToGoString

from crusoe_metrics_exporter.textformat import _value, go_float


def reference(v: float) -> str:
    return str(floatToGoString(v))  # type: ignore[no-untyped-call]


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_spelt_like_prometheus_client(v: float) -> None:
    assert go_float(v) == reference(v)
    assert _value(v) == reference(v)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_ints_are_spelt_like_prometheus_client(v: int) -> None:
    assert _value(v) == reference(v)


def test_the_edges_of_the_fast_paths() -> None:
    edges = [999_999, 1_000_000, 1_000_001, 1_200_000, 10_000_000, 123_456_789_012, 2**53 - 1, 2**53, 2**53 + 1,
             10**16 - 1, 10**16, -1_000_000, -999_999, 0]
    for v in edges:
        assert _value(v) == reference(v), v
    for f in (1e6, 999_999.5, 1e16, 1.5e300, -1e6, 0.0, -0.0, 5e-324, math.inf, -math.inf):
        assert _value(f) == reference(f), f
