"""Parsing /proc/meminfo: ``Key:   value [kB]`` lines.

Only the keys asked for are converted; each is checked on its own, so one
damaged line costs its own value and one counted error, never the others
(the Go exporter dropped every meminfo value when one wanted line was bad).
"""

from __future__ import annotations

from typing import NamedTuple

#: meminfo values are unsigned longs: at most 20 digits.
_MAX_DIGITS = 20
_KIB = 1024
_MAX_PROBLEMS = 8


class MeminfoParse(NamedTuple):
    #: Wanted key -> value in bytes (or a plain count for unit-less keys).
    values: dict[str, int]
    #: Wanted keys whose (first) line was damaged.
    damaged: frozenset[str]
    #: Damaged wanted lines and repeated wanted keys.
    errors: int
    problems: tuple[str, ...]


def parse_meminfo(data: bytes, wanted: frozenset[str]) -> MeminfoParse:
    """Values of the ``wanted`` keys found in ``data``; the first line of a key wins."""
    keys = {key.encode(): key for key in wanted}
    values: dict[str, int] = {}
    damaged: set[str] = set()
    errors = 0
    problems: set[str] = set()
    for line in data.split(b"\n"):
        tokens = line.split()
        if not tokens or not tokens[0].endswith(b":"):
            continue
        key = keys.get(tokens[0][:-1])
        if key is None:
            continue
        if key in values or key in damaged:
            errors += 1
            problems.add(f"{key} listed twice")
            continue
        value = _bytes(tokens[1:])
        if value is None:
            errors += 1
            damaged.add(key)
            problems.add(f"{key} is not a number of kB")
            continue
        values[key] = value
    return MeminfoParse(values, frozenset(damaged), errors, tuple(sorted(problems)[:_MAX_PROBLEMS]))


def _bytes(fields: list[bytes]) -> int | None:
    if len(fields) == 2 and fields[1] == b"kB":
        scale = _KIB
    elif len(fields) == 1:
        scale = 1
    else:
        return None
    raw = fields[0]
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:
        return None
    return int(raw) * scale
