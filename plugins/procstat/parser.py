"""Reading three fields of /proc/stat: CPU steal time and the runnable and blocked task counts.

Only the lines we need are looked at. On a large host the ``intr`` line (one
count per interrupt number) runs to a megabyte; the file is walked from one
line start to the next with ``bytes.find(b"\n")`` (memchr), so that line is
crossed once at memory speed and never split or converted. The Go exporter
could not read such a line at all until it raised its scanner's limit.

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


def _key_lines(data: bytes, keys: tuple[bytes, ...]) -> dict[bytes, list[bytes]]:
    """The lines whose first token is one of ``keys``, per key, in file order.

    "cpu" must not match "cpu0": a key is followed by a blank or the line's end.
    """
    found: dict[bytes, list[bytes]] = {key: [] for key in keys}
    size = len(data)
    start = 0
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        for key in keys:
            after = start + len(key)
            if data.startswith(key, start) and (after == end or data[after] in _BLANKS):
                found[key].append(data[start:end])
                break
        start = end + 1
    return found


def _number(raw: bytes) -> int | None:
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:
        return None
    value = int(raw)
    return value if value < _U64 else None


def parse_stat(data: bytes) -> StatParse:
    values: dict[str, int] = {}
    errors = dict.fromkeys(FIELDS, 0)
    problems: list[str] = []
    lines = _key_lines(data, (_CPU_KEY, b"procs_running", b"procs_blocked"))

    def field(name: str, key: bytes, column: int) -> None:
        found = lines[key]
        if len(found) > 1:
            # The first line wins; each repeat is an error.
            errors[name] += len(found) - 1
            problems.append(f"'{key.decode()}' line repeated")
        if not found:
            errors[name] += 1
            problems.append(f"no '{key.decode()}' line")
            return
        tokens = found[0].split()
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
