"""Pure parts of disk_latency: bounds, the generated C bucket search, map decoding."""

from __future__ import annotations

import bisect
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.contract import HistogramValue
from crusoe_metrics_exporter.histogram import cumulative_buckets
from crusoe_metrics_exporter.plugins.disk_latency.parser import (
    BOUNDS_NS,
    BOUNDS_SECONDS,
    NBUCKETS,
    VALUE_SIZE,
    DiskStats,
    SideStats,
    bucket_search_c,
    decode_key,
    decode_value,
    dev_t,
    device_slots,
    encode_key,
    encode_value,
    merge,
)

# The seed's disk bounds (seed-implementation §5.2), in seconds.
SEED_BOUNDS = (
    0.000010, 0.000014, 0.000021, 0.000030, 0.000043, 0.000062, 0.000089, 0.000127, 0.000183, 0.000264,
    0.000379, 0.000546, 0.000785, 0.001129, 0.001624, 0.002336, 0.003360, 0.004833, 0.006952, 0.010000,
)


def test_bounds_are_the_seeds_twenty_finite_bounds() -> None:
    assert BOUNDS_SECONDS == SEED_BOUNDS
    assert NBUCKETS == 21
    assert BOUNDS_NS[0] == 10_000 and BOUNDS_NS[-1] == 10_000_000


def _generated_bucket_of() -> object:
    """Turn the generated C into Python line by line (it is nested ifs and returns only)."""
    c = bucket_search_c()
    body = c.split("{", 1)[1].rsplit("}", 1)[0]
    py = ["def bucket_of(ns):"]
    for line in body.splitlines():
        if not line.strip() or line.strip() == "}":
            continue
        m = re.fullmatch(r"(\s*)if \(ns <= (\d+)ULL\) \{", line)
        if m:
            py.append(f"{m.group(1)}if ns <= {m.group(2)}:")
            continue
        m = re.fullmatch(r"(\s*)return (\d+);", line)
        assert m, f"unexpected line in generated C: {line!r}"
        py.append(f"{m.group(1)}return {m.group(2)}")
    namespace: dict[str, object] = {}
    exec("\n".join(py), namespace)
    return namespace["bucket_of"]


def test_generated_c_puts_each_value_in_its_le_bucket() -> None:
    bucket_of = _generated_bucket_of()
    probes = {0, 1}
    for bound in BOUNDS_NS:
        probes |= {bound - 1, bound, bound + 1}
    probes |= {10**12}
    for ns in sorted(probes):
        expected = bisect.bisect_left(BOUNDS_NS, ns)  # first bound >= ns: Prometheus "le"
        assert bucket_of(ns) == expected, ns  # type: ignore[operator]
    assert bucket_of(BOUNDS_NS[-1] + 1) == NBUCKETS - 1  # type: ignore[operator]


@given(st.integers(min_value=0, max_value=2**63))
def test_generated_c_matches_bisect_everywhere(ns: int) -> None:
    assert _BUCKET_OF(ns) == bisect.bisect_left(BOUNDS_NS, ns)  # type: ignore[operator]


_BUCKET_OF = _generated_bucket_of()


def test_value_round_trip_and_histogram() -> None:
    read = SideStats(4096, 2_000_000_000, 1, 5, tuple(range(NBUCKETS)))
    write = SideStats(8192, 3, 0, 0, (0,) * (NBUCKETS - 1) + (7,))
    raw = encode_value(DiskStats(dev_t(252, 16), read, write))
    assert len(raw) == VALUE_SIZE
    decoded = decode_value(raw)
    assert decoded == DiskStats(dev_t(252, 16), read, write)
    assert merge(decoded, decoded).read.buckets == tuple(2 * n for n in range(NBUCKETS))
    assert merge(decoded, decoded).owner == dev_t(252, 16)
    assert merge(decoded, decoded).read.untimed == 10
    assert decoded.read.completions == sum(range(NBUCKETS))
    hist = decoded.write.histogram()
    assert hist == HistogramValue((0,) * (NBUCKETS - 1) + (7,), 3e-9)
    buckets = cumulative_buckets(BOUNDS_SECONDS, hist)
    # A slow outlier counts only under +Inf, never under the seed's last finite bound.
    assert buckets[-2] == ("0.01", 0.0)
    assert buckets[-1] == ("+Inf", 7.0)


def test_wrong_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        decode_value(b"\0" * (VALUE_SIZE - 8))
    with pytest.raises(ValueError):
        decode_key(b"\0" * 8)


def test_key_is_the_kernels_dev_t_encoding() -> None:
    # vdq is 252:256: the seed's (major << 8 | minor & 0xff) folded it onto vda.
    assert decode_key(encode_key(252, 256)) == (252, 256)
    assert decode_key(encode_key(252, 0)) != decode_key(encode_key(252, 256))
    assert decode_key((254 << 20 | 3).to_bytes(4, "little")) == (254, 3)


def test_device_slots_mirror_the_c_hash() -> None:
    # dev_slot() in disk_latency.c: ((u32)(dev * 2654435761u) >> 16) & (slots - 1), second slot next to it.
    dev = dev_t(252, 0)
    first = ((dev * 2654435761) % 2**32 >> 16) % 64
    assert device_slots(dev) == (first, (first + 1) % 64)
    assert device_slots(dev_t(252, 16), 64)[1] == (device_slots(dev_t(252, 16), 64)[0] + 1) % 64
    assert all(0 <= s < 64 for d in range(0, 1 << 24, 4099) for s in device_slots(d))
