"""Pure parsing of /proc/uptime: "<seconds since boot> <idle seconds summed over CPUs>"."""

from __future__ import annotations

import math


def parse_uptime(text: str) -> float:
    """Seconds since boot; raises ValueError on anything that is not /proc/uptime."""
    fields = text.split()
    if len(fields) != 2:
        raise ValueError(f"expected 2 fields, got {len(fields)}")
    seconds = float(fields[0])
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"implausible uptime {fields[0]!r}")
    return seconds
