"""Pure helpers for disk_latency: bucket bounds, the generated C bucket search, map decoding."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from crusoe_metrics_exporter.sdk import HistogramValue, geometric_bounds

#: The seed's 20 geometric bounds, 10 µs to 10 ms (ratio 1000^(1/19)), all
#: finite; observations above 10 ms go to the overflow bucket (+Inf).
BOUNDS_SECONDS: tuple[float, ...] = geometric_bounds(0.00001, 0.01, 20)
BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in BOUNDS_SECONDS)
NBUCKETS = len(BOUNDS_SECONDS) + 1

OP_READ, OP_WRITE = 0, 1
_U64 = 8
#: struct side_stats: bytes, latency_ns, errors, untimed, buckets[NBUCKETS].
SIDE_WORDS = 4 + NBUCKETS
#: struct dev_stats: u32 dev (slot owner), u32 pad, then read and write sides.
VALUE_SIZE = 8 + 2 * SIDE_WORDS * _U64
_VALUE = struct.Struct(f"<II{2 * SIDE_WORDS}Q")
_KEY = struct.Struct("<I")
_MINOR_BITS = 20
#: ARRAY slots for reported disks; a power of two (the C masks with it).
DEVICE_SLOTS = 64


@dataclass(frozen=True)
class SideStats:
    """Cumulative numbers of one direction (read or write) of one disk."""

    bytes: int
    latency_ns: int
    errors: int
    #: Completions whose issue was not seen (an fsync's empty pre-flush):
    #: counted, not timed. ``completions + untimed`` is what diskstats counts.
    untimed: int
    buckets: tuple[int, ...]

    @property
    def completions(self) -> int:
        """Timed completions (the histogram's count)."""
        return sum(self.buckets)

    def histogram(self) -> HistogramValue:
        return HistogramValue(self.buckets, self.latency_ns / 1e9)


@dataclass(frozen=True)
class DiskStats:
    #: dev_t owning the ARRAY slot this came from (0: a free slot).
    owner: int
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


def dev_t(major: int, minor: int) -> int:
    """The kernel-internal dev_t the block tracepoints report (major << 20 | minor)."""
    return (major << _MINOR_BITS) | minor


def split_dev_t(dev: int) -> tuple[int, int]:
    return dev >> _MINOR_BITS, dev & ((1 << _MINOR_BITS) - 1)


def device_slots(dev: int, slots: int = DEVICE_SLOTS) -> tuple[int, int]:
    """The two ARRAY slots a disk may own; must match dev_slot() in disk_latency.c."""
    first = (((dev * 2654435761) & 0xFFFFFFFF) >> 16) & (slots - 1)
    return first, (first + 1) & (slots - 1)


def decode_key(key: bytes) -> tuple[int, int]:
    """(major, minor) from the map key, a kernel-internal dev_t (major << 20 | minor)."""
    if len(key) != _KEY.size:
        raise ValueError(f"disk_stats key is {len(key)} bytes, expected {_KEY.size}")
    (dev,) = _KEY.unpack(key)
    return split_dev_t(dev)


def encode_key(major: int, minor: int) -> bytes:
    return _KEY.pack(dev_t(major, minor))


def encode_slot_index(index: int) -> bytes:
    return _KEY.pack(index)


def decode_value(value: bytes) -> DiskStats:
    if len(value) != VALUE_SIZE:
        raise ValueError(f"disk stats value is {len(value)} bytes, expected {VALUE_SIZE}")
    owner, _pad, *words = _VALUE.unpack(value)

    def side(offset: int) -> SideStats:
        return SideStats(
            bytes=words[offset],
            latency_ns=words[offset + 1],
            errors=words[offset + 2],
            untimed=words[offset + 3],
            buckets=tuple(words[offset + 4 : offset + SIDE_WORDS]),
        )

    return DiskStats(owner=owner, read=side(0), write=side(SIDE_WORDS))


def encode_value(stats: DiskStats) -> bytes:
    """The inverse of :func:`decode_value` (slot assignment and tests use it)."""
    words: list[int] = []
    for s in (stats.read, stats.write):
        words += [s.bytes, s.latency_ns, s.errors, s.untimed, *s.buckets]
    return _VALUE.pack(stats.owner, 0, *words)


def empty_stats(owner: int = 0) -> DiskStats:
    side = SideStats(0, 0, 0, 0, (0,) * NBUCKETS)
    return DiskStats(owner, side, side)


def merge(a: DiskStats, b: DiskStats) -> DiskStats:
    """Sum two partial records of one disk (its ARRAY slot and its hash-map entry)."""

    def add(x: SideStats, y: SideStats) -> SideStats:
        return SideStats(
            x.bytes + y.bytes,
            x.latency_ns + y.latency_ns,
            x.errors + y.errors,
            x.untimed + y.untimed,
            tuple(p + q for p, q in zip(x.buckets, y.buckets, strict=True)),
        )

    return DiskStats(a.owner, add(a.read, b.read), add(a.write, b.write))
