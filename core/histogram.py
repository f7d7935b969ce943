"""Turn per-bucket counts, as eBPF maps keep them, into a Prometheus histogram."""

from __future__ import annotations

from collections.abc import Sequence

from crusoe_metrics_exporter.contract import HistogramValue
from crusoe_metrics_exporter.textformat import go_float


def cumulative_buckets(bounds: Sequence[float], value: HistogramValue) -> list[tuple[str, float]]:
    """Return ``[(le, cumulative_count), ...]`` ending with ``("+Inf", total)``.

    ``value.counts`` holds one count per finite bound followed by the overflow
    count. The overflow goes to ``+Inf`` only: the seed exported its
    unbounded last eBPF bucket under the last *finite* bound, which made a
    30 s stall look like a 50 ms request.
    """
    if len(value.counts) != len(bounds) + 1:
        raise ValueError(f"expected {len(bounds) + 1} bucket counts (bounds + overflow), got {len(value.counts)}")
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, value.counts[:-1], strict=True):
        if count < 0:
            raise ValueError("bucket counts must not be negative")
        running += count
        out.append((_format_bound(bound), float(running)))
    if value.counts[-1] < 0:
        raise ValueError("bucket counts must not be negative")
    running += value.counts[-1]
    out.append(("+Inf", float(running)))
    return out


def bucket_index(bounds: Sequence[float], observation: float) -> int:
    """Index of the bucket an observation falls in (``le`` semantics: bound inclusive)."""
    lo, hi = 0, len(bounds)
    while lo < hi:
        mid = (lo + hi) // 2
        if observation <= bounds[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def geometric_bounds(first: float, last: float, count: int, digits: int = 6) -> tuple[float, ...]:
    """``count`` geometrically spaced bounds from ``first`` to ``last`` inclusive."""
    ratio = (last / first) ** (1.0 / (count - 1))
    return tuple(round(first * ratio**k, digits) for k in range(count))


def _format_bound(bound: float) -> str:
    # The same spelling prometheus_client's own histograms use for "le".
    return go_float(bound)
