"""Parsing /proc/diskstats.

Each line is ``major minor name`` followed by the kernel's counters: 11 of
them before Linux 4.18, 15 since (discard), 17 since 5.5 (flush). Lines are
parsed as bytes: ``bytes.split`` splits on ASCII whitespace only and
``bytes.isdigit`` accepts ASCII digits only, which is exactly the kernel's
alphabet, so odd Unicode in a damaged file cannot sneak through ``int()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

#: Counter positions after the device name (Documentation/admin-guide/iostats.rst).
READS_COMPLETED = 0
READS_MERGED = 1
SECTORS_READ = 2
READ_TIME_MS = 3
WRITES_COMPLETED = 4
WRITES_MERGED = 5
SECTORS_WRITTEN = 6
WRITE_TIME_MS = 7
IOS_IN_PROGRESS = 8
IO_TIME_MS = 9
WEIGHTED_IO_TIME_MS = 10
DISCARDS_COMPLETED = 11
DISCARDS_MERGED = 12
SECTORS_DISCARDED = 13
DISCARD_TIME_MS = 14
FLUSHES_COMPLETED = 15
FLUSH_TIME_MS = 16

#: Fewest counters a record may have (the pre-4.18 format: 3 + 11 fields).
MIN_COUNTERS = 11
#: Counters we understand; a future kernel's extra columns are ignored.
MAX_COUNTERS = 17
#: Kernel counters are at most 64 bits wide; anything larger is damage.
_COUNTER_LIMIT = 1 << 64
#: Problem descriptions kept per parse; a garbage file must not build a huge log line.
_MAX_PROBLEMS = 8


class DiskRecord(NamedTuple):
    """One device line. ``counters`` holds 11, 15 or 17 values (see positions above)."""

    major: int
    minor: int
    name: str
    counters: tuple[int, ...]


class ParseResult(NamedTuple):
    records: list[DiskRecord]
    #: Malformed lines (too short, non-numeric, out of range) and duplicate devices.
    errors: int
    #: One short description per kind of problem seen, for a debug log line.
    problems: tuple[str, ...]


def _usable_counters(count: int) -> int:
    # Only whole groups: a line with 16 counters has a complete discard group
    # and a partial flush group, and half a group is not trusted.
    if count >= 17:
        return 17
    if count >= 15:
        return 15
    return 11


def parse_diskstats(data: bytes, selected: Callable[[str], bool]) -> ParseResult:
    """Records of the devices ``selected`` accepts, in file order.

    Counters are converted only for selected devices, so a host with
    thousands of loop and dm devices costs little; a line's shape (field
    count, major/minor, name) is checked for every line. The first line of a
    device name wins; repeats are counted as errors.
    """
    records: list[DiskRecord] = []
    seen: set[str] = set()
    errors = 0
    problems: set[str] = set()
    for line in data.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 + MIN_COUNTERS:
            errors += 1
            problems.add(f"line with {len(parts)} fields (need at least {3 + MIN_COUNTERS})")
            continue
        major_raw, minor_raw, name_raw = parts[0], parts[1], parts[2]
        if not (major_raw.isdigit() and minor_raw.isdigit()) or len(major_raw) > 10 or len(minor_raw) > 10:
            errors += 1
            problems.add("major/minor is not a number")
            continue
        try:
            name = name_raw.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if not name.isprintable() or not name:
            errors += 1
            problems.add("device name is not printable ASCII")
            continue
        if not selected(name):
            continue
        raw_counters = parts[3 : 3 + _usable_counters(len(parts) - 3)]
        # 20 digits hold any 64-bit value; longer strings are damage and
        # would also make int() slow on a hostile megabyte-long "number".
        if not all(c.isdigit() and len(c) <= 20 for c in raw_counters):
            errors += 1
            problems.add(f"non-numeric counter for {name}")
            continue
        counters = tuple(map(int, raw_counters))
        if any(c >= _COUNTER_LIMIT for c in counters):
            errors += 1
            problems.add(f"counter beyond 64 bits for {name}")
            continue
        if name in seen:
            errors += 1
            problems.add(f"device {name} listed twice")
            continue
        seen.add(name)
        records.append(DiskRecord(int(major_raw), int(minor_raw), name, counters))
    return ParseResult(records, errors, tuple(sorted(problems)[:_MAX_PROBLEMS]))
