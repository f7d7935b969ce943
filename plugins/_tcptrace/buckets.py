"""Histogram bucketing generated into C from the one bound table in Python.

The kernel compares nanoseconds against the exact bounds with ``<=``, so a
sample counted under ``le=x`` really was at most ``x`` seconds; index
``len(bounds)`` is the overflow slot (exported as ``+Inf`` only).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def bounds_ns(bounds_seconds: Sequence[float]) -> tuple[int, ...]:
    out = tuple(round(b * 1e9) for b in bounds_seconds)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError("bounds must be strictly ascending")
    return out


def bucket_function_c(bounds_seconds: Sequence[float], name: str = "latency_bucket") -> str:
    """C source of ``static u32 name(u64 ns)``: a balanced comparison tree (log2 n compares)."""
    ns = bounds_ns(bounds_seconds)

    def tree(lo: int, hi: int, indent: str) -> str:
        # Returns the index of the first bound >= ns among ns[lo:hi], or hi.
        if lo == hi:
            return f"{indent}return {lo};\n"
        mid = (lo + hi) // 2
        return (
            f"{indent}if (ns <= {ns[mid]}ULL) {{\n"
            + tree(lo, mid, indent + "    ")
            + f"{indent}}}\n"
            + tree(mid + 1, hi, indent)
        )

    return f"static __always_inline u32 {name}(u64 ns)\n{{\n" + tree(0, len(ns), "    ") + "}\n"


def bucket_of(bounds_seconds: Sequence[float], ns: int) -> int:
    """What the generated C returns for ``ns`` (used to test the generator)."""
    for i, b in enumerate(bounds_ns(bounds_seconds)):
        if ns <= b:
            return i
    return len(bounds_seconds)
