"""Parsing one ``/proc/pressure/<resource>`` file (pressure stall information).

The kernel writes one line per scope (Documentation/accounting/psi.rst)::

    some avg10=0.00 avg60=12.34 avg300=8.50 total=12345678
    full avg10=1.11 avg60=5.10 avg300=3.20 total=456789

``avgN`` are percentages of wall time over the last N seconds, printed as
``%lu.%02lu``; ``total`` is the cumulative stall time in microseconds.

Each value is checked on its own: a damaged ``avg60`` costs that one series
and one counted error, never the rest of the line or the other scope (the Go
exporter failed the whole file on one bad value and emitted zeros for a
missing ``full`` line). Unknown lines and unknown keys are ignored, so a
future kernel that adds some is still read.
"""

from __future__ import annotations

import re
from typing import NamedTuple

SCOPES = ("some", "full")
WINDOWS = ("10", "60", "300")
_AVG_KEYS = tuple(f"avg{w}".encode() for w in WINDOWS)
_TOTAL_KEY = b"total"
_WANTED = (*_AVG_KEYS, _TOTAL_KEY)

#: The kernel's avg format; signs, exponents, nan and inf are damage.
_AVG = re.compile(rb"\d{1,3}(?:\.\d{1,6})?")
#: total is a u64 of microseconds: at most 20 digits.
_TOTAL = re.compile(rb"\d{1,20}")
_U64 = 1 << 64
_MAX_PROBLEMS = 8


class ScopeValues(NamedTuple):
    """What one scope line gave; a value that was damaged or missing is None."""

    #: avg10, avg60, avg300 as fractions (0-1) of the window.
    ratios: tuple[float | None, float | None, float | None]
    #: Cumulative stall time in seconds.
    stall_seconds: float | None


class PressureParse(NamedTuple):
    scopes: dict[str, ScopeValues]
    #: Damaged or missing values, duplicate lines and missing required scopes.
    errors: int
    problems: tuple[str, ...]


def parse_pressure(data: bytes, required_scopes: tuple[str, ...] = SCOPES) -> PressureParse:
    """Values per scope of one pressure file; ``required_scopes`` missing are errors.

    cpu has no ``full`` line before Linux 5.13, so its caller requires only
    ``some``; memory and io always have both.
    """
    scopes: dict[str, ScopeValues] = {}
    errors = 0
    problems: set[str] = set()
    for line in data.split(b"\n"):
        tokens = line.split()
        if not tokens or tokens[0] not in (b"some", b"full"):
            continue
        scope = tokens[0].decode()
        if scope in scopes:
            errors += 1
            problems.add(f"'{scope}' line repeated")
            continue
        fields: dict[bytes, bytes] = {}
        for token in tokens[1:]:
            key, sep, value = token.partition(b"=")
            if sep and key in _WANTED and key not in fields:
                fields[key] = value
        ratios: list[float | None] = []
        for key in _AVG_KEYS:
            ratio = _ratio(fields.get(key))
            if ratio is None:
                errors += 1
                problems.add(f"{scope} {key.decode()} missing or not a percentage")
            ratios.append(ratio)
        stall = _stall_seconds(fields.get(_TOTAL_KEY))
        if stall is None:
            errors += 1
            problems.add(f"{scope} total missing or not a microsecond count")
        scopes[scope] = ScopeValues((ratios[0], ratios[1], ratios[2]), stall)
    for scope in required_scopes:
        if scope not in scopes:
            errors += 1
            problems.add(f"no '{scope}' line")
    return PressureParse(scopes, errors, tuple(sorted(problems)[:_MAX_PROBLEMS]))


def _ratio(raw: bytes | None) -> float | None:
    if raw is None or not _AVG.fullmatch(raw):
        return None
    # "12.34" -> 1234 / 10000: one correctly rounded division, so the ratio
    # is the float nearest the exact decimal (12.34 / 100 rounds twice).
    whole, _, fraction = raw.partition(b".")
    digits = int(whole + fraction)
    full_window = 100 * 10 ** len(fraction)  # 100 % in units of the last printed digit
    return digits / full_window if digits <= full_window else None


def _stall_seconds(raw: bytes | None) -> float | None:
    if raw is None or not _TOTAL.fullmatch(raw):
        return None
    micros = int(raw)
    return micros / 1e6 if micros < _U64 else None
