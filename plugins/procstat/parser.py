"""Reading three fields of /proc/stat: CPU steal time and the runnable and blocked task counts.

Only the lines we need are looked at. On a large host the ``intr`` line (one
count per interrupt number) runs to a megabyte; it is skipped with
``bytes.find`` at memchr speed and never split or converted, so its size
does not matter. The Go exporter could not read such a line at all until it
raised its scanner's limit.

Each field is checked on its own: a damaged or missing one is an error
charged to that field and the others are still reported.
"""

from __future__ import annotations

from typing import NamedTuple

STEAL = "steal"
PROCS_RUNNING = "procs_running"
PROCS_BLOCKED = "procs_blocked"
FIELDS = (STEAL, PROCS_RUNNING, PROCS_BLOCKED)

#: The aggregate cpu line: ``cpu  user nice system idle iowait irq softirq steal ...``.
_CPU_KEY = b"cpu"
_STEAL_COLUMN = 8
_MAX_DIGITS = 20
#: What bytes.split() splits on: the separators of the kernel's text files.
_BLANKS = b" \t\r\x0b\x0c"
_U64 = 1 << 64


class StatParse(NamedTuple):
    #: Field -> value (steal in USER_HZ ticks, the task counts as counts).
    values: dict[str, int]
    #: Field -> errors charged to it (missing, damaged, repeated).
    errors: dict[str, int]
    problems: tuple[str, ...]


def _lines(data: bytes, key: bytes) -> tuple[bytes | None, int]:
    """The first line whose first token is ``key``, and how many more such lines follow."""
    first: bytes | None = None
    repeats = 0
    needle = b"\n" + key
    start = 0 if data.startswith(key) else _after_newline(data.find(needle))
    while start >= 0:
        after = start + len(key)
        end = data.find(b"\n", after)
        if end < 0:
            end = len(data)
        # "cpu" must not match "cpu0": the key is followed by blanks or the line's end.
        if after == end or data[after] in _BLANKS:
            if first is None:
                first = data[start:end]
            else:
                repeats += 1
        start = _after_newline(data.find(needle, end))
    return first, repeats


def _after_newline(found: int) -> int:
    return found + 1 if found >= 0 else -1


def _number(raw: bytes) -> int | None:
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:
        return None
    value = int(raw)
    return value if value < _U64 else None


def parse_stat(data: bytes) -> StatParse:
    values: dict[str, int] = {}
    errors = dict.fromkeys(FIELDS, 0)
    problems: list[str] = []

    def field(name: str, key: bytes, column: int) -> None:
        line, repeats = _lines(data, key)
        if repeats:
            errors[name] += repeats
            problems.append(f"'{key.decode()}' line repeated")
        if line is None:
            errors[name] += 1
            problems.append(f"no '{key.decode()}' line")
            return
        tokens = line.split()
        if len(tokens) <= column:
            errors[name] += 1
            problems.append(f"'{key.decode()}' line has no {name} column")
            return
        value = _number(tokens[column])
        if value is None:
            errors[name] += 1
            problems.append(f"{name} is not a number")
            return
        values[name] = value

    field(STEAL, _CPU_KEY, _STEAL_COLUMN)
    field(PROCS_RUNNING, b"procs_running", 1)
    field(PROCS_BLOCKED, b"procs_blocked", 1)
    return StatParse(values, errors, tuple(problems))
