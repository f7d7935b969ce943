"""Monotonic per-label totals built from kernel counters keyed by address.

The kernel keeps one counter vector per destination address. Which label
set an address belongs to can change (a volume is mounted, DNS rotates), so
the exporter never re-sums kernel entries per scrape: it folds each
address's *increase* since the last read into the label set the address
belongs to at that moment. Label totals therefore only grow, whatever the
mapping does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

Vector = tuple[int, ...]


def add(a: Vector, b: Vector) -> Vector:
    return tuple(x + y for x, y in zip(a, b, strict=True))


@dataclass
class Accumulator:
    """Folds readings {address: vector} into {label key: vector}."""

    width: int
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, Vector] = field(default_factory=dict)
    _totals: dict[Hashable, Vector] = field(default_factory=dict)
    _changed_at: dict[Hashable, float] = field(default_factory=dict)

    def fold(self, readings: Mapping[str, Vector], key_of: Callable[[str], Hashable]) -> int:
        """Add each address's increase to its current label key.

        Returns how many readings went backwards (an entry that was
        recreated in the kernel): those count from zero again, and the
        caller reports them as collection errors.
        """
        anomalies = 0
        now = self.clock()
        for address, vector in readings.items():
            if len(vector) != self.width:
                raise ValueError(f"reading of width {len(vector)}, expected {self.width}")
            previous = self._last.get(address)
            if previous is None:
                delta = vector
            else:
                delta = tuple(n - p for n, p in zip(vector, previous, strict=True))
                if any(d < 0 for d in delta):
                    anomalies += 1
                    delta = vector
            self._last[address] = vector
            if not any(delta):
                continue
            key = key_of(address)
            self._totals[key] = add(self._totals.get(key, (0,) * self.width), delta)
            self._changed_at[key] = now
        return anomalies

    def forget(self, addresses: Iterable[str]) -> None:
        """Drop the baseline of addresses whose kernel entries were deleted."""
        for address in addresses:
            self._last.pop(address, None)

    def ensure(self, keys: Iterable[Hashable]) -> None:
        """Make keys visible with zero totals (a configured target with no traffic yet)."""
        now = self.clock()
        for key in keys:
            if key not in self._totals:
                self._totals[key] = (0,) * self.width
                self._changed_at[key] = now

    def totals(self, current: Iterable[Hashable], retention: float) -> dict[Hashable, Vector]:
        """Totals of current keys, and of others that changed within ``retention`` seconds.

        Keys past retention are dropped from the output but kept, so a series
        that comes back resumes from its old value instead of resetting.
        """
        wanted = set(current)
        return self.totals_where(wanted.__contains__, retention)

    def totals_where(self, is_current: Callable[[Hashable], bool], retention: float) -> dict[Hashable, Vector]:
        """:meth:`totals` with "current" decided per key (keys built from a label and something else)."""
        horizon = self.clock() - retention
        return {k: v for k, v in self._totals.items() if is_current(k) or self._changed_at.get(k, 0.0) >= horizon}
