"""Pure helpers for disk_latency: bucket bounds, the generated C bucket search, map decoding."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from crusoe_metrics_exporter.contract import HistogramValue
from crusoe_metrics_exporter.histogram import geometric_bounds

#: The seed's 20 geometric bounds, 10 µs to 10 ms (ratio 1000^(1/19)), all
#: finite; observations above 10 ms go to the overflow bucket (+Inf).
BOUNDS_SECONDS: tuple[float, ...] = geometric_bounds(0.00001, 0.01, 20)
BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in BOUNDS_SECONDS)
NBUCKETS = len(BOUNDS_SECONDS) + 1

OP_READ, OP_WRITE = 0, 1
_U64 = 8
#: struct side_stats: bytes, latency_ns, errors, buckets[NBUCKETS].
SIDE_WORDS = 3 + NBUCKETS
VALUE_SIZE = 2 * SIDE_WORDS * _U64
_VALUE = struct.Struct(f"<{2 * SIDE_WORDS}Q")
_KEY = struct.Struct("<I")
_MINOR_BITS = 20


@dataclass(frozen=True)
class SideStats:
    """Cumulative numbers of one direction (read or write) of one disk."""

    bytes: int
    latency_ns: int
    errors: int
    buckets: tuple[int, ...]

    @property
    def completions(self) -> int:
        return sum(self.buckets)

    def histogram(self) -> HistogramValue:
        return HistogramValue(self.buckets, self.latency_ns / 1e9)


@dataclass(frozen=True)
class DiskStats:
    read: SideStats
    write: SideStats


def bucket_search_c(bounds_ns: tuple[int, ...] = BOUNDS_NS) -> str:
    """C for ``bucket_of(ns)``: a binary search over the bounds, ``le`` semantics.

    Generated from the same tuple the exporter labels buckets with, so the
    kernel side and the ``le`` labels cannot drift apart. A value equal to a
    bound lands in that bound's bucket, as Prometheus' ``le`` means.
    """

    def emit(lo: int, hi: int, indent: str) -> list[str]:
        # Returns the bucket for ns given bounds[lo-1] < ns <= bounds[hi] (hi may be len: overflow).
        if lo == hi:
            return [f"{indent}return {lo};"]
        mid = (lo + hi) // 2
        inner = emit(lo, mid, indent + "    ")
        rest = emit(mid + 1, hi, indent)
        return [f"{indent}if (ns <= {bounds_ns[mid]}ULL) {{", *inner, f"{indent}}}", *rest]

    body = emit(0, len(bounds_ns), "    ")
    return "static __always_inline u32 bucket_of(u64 ns)\n{\n" + "\n".join(body) + "\n}\n"


def decode_key(key: bytes) -> tuple[int, int]:
    """(major, minor) from the map key, a kernel-internal dev_t (major << 20 | minor)."""
    if len(key) != _KEY.size:
        raise ValueError(f"disk_stats key is {len(key)} bytes, expected {_KEY.size}")
    (dev,) = _KEY.unpack(key)
    return dev >> _MINOR_BITS, dev & ((1 << _MINOR_BITS) - 1)


def encode_key(major: int, minor: int) -> bytes:
    return _KEY.pack((major << _MINOR_BITS) | minor)


def decode_value(value: bytes) -> DiskStats:
    if len(value) != VALUE_SIZE:
        raise ValueError(f"disk_stats value is {len(value)} bytes, expected {VALUE_SIZE}")
    words = _VALUE.unpack(value)

    def side(offset: int) -> SideStats:
        return SideStats(
            bytes=words[offset],
            latency_ns=words[offset + 1],
            errors=words[offset + 2],
            buckets=tuple(words[offset + 3 : offset + SIDE_WORDS]),
        )

    return DiskStats(read=side(0), write=side(SIDE_WORDS))


def encode_value(stats: DiskStats) -> bytes:
    """The inverse of :func:`decode_value` (tests seed maps with it)."""
    words: list[int] = []
    for s in (stats.read, stats.write):
        words += [s.bytes, s.latency_ns, s.errors, *s.buckets]
    return _VALUE.pack(*words)
