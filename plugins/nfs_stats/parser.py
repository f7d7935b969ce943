"""Pure parsing of ``/proc/<pid>/mountstats`` into per-volume NFS statistics.

The kernel writes one block per mount::

    device srv:/volumes/ID mounted on /mnt with fstype nfs statvers=1.1
    \tage:\t245
    \tevents:\t<27 numbers>
    \tbytes:\t<8 numbers>
    \tRPC iostats version: 1.1  p/v: 100003/3 (nfs)
    \txprt:\ttcp <13 numbers>          (one line per transport; nconnect=N gives N)
    \tper-op statistics
    \t        READ: <8 or 9 numbers>

Design points, each a deliberate difference from prometheus/procfs and the
seed exporter:

* Errors are isolated per line and per block. A malformed line is counted
  (against the error counter of the seed collector that owned that kind of
  line) and dropped; everything else in the file is still reported. An
  unexpected failure inside one block drops that block only.
* Per-op lines with 8 numbers (kernels before the ``errors`` column) are
  accepted; the seed dropped them silently.
* Blocks of one volume (the same export mounted twice) are merged by taking
  each field's maximum, as the seed did: summing would double-count a bind
  of one superblock, and the maximum is the longest-lived view.
* ``nfs_rpc_backlog`` is the *sum* of ``bklog_u`` over the mount's lanes (the
  seed took the maximum lane, which drops the other lanes' queueing).

Only ``str.split`` and ``int`` run per line: a host with hundreds of nconnect
mounts has tens of thousands of lines and a scrape must stay cheap.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from crusoe_metrics_exporter.sdk import unescape_mount_field, volume_id

#: Label values longer than this are not ids but garbage; refusing them keeps
#: a corrupt file from producing megabyte-sized labels.
MAX_LABEL_LENGTH = 512

NFS_FSTYPES = frozenset({"nfs", "nfs4"})

#: The kernel's counters are u64; anything outside is corruption (and a
#: larger int would overflow the float conversion of the exposition).
U64_MAX = 2**64 - 1

#: More lanes than any real mount has (nconnect stops at 16, NFSv4.1
#: trunking at max_connect=128); beyond this the block is corrupt and extra
#: lanes would only add series.
MAX_LANES = 256

# Kind of line an error is charged to; the collector maps these onto the
# seed's three error counters.
STATS = "stats"
XPRT = "xprt"
EVENTS = "events"

# Numbers after the protocol name that an ``xprt:`` line must have, per
# statvers. The kernel prints these exact counts; longer lines are accepted
# so a future kernel that appends fields does not blind us.
_XPRT_MIN_FIELDS: dict[tuple[str, str], int] = {
    ("tcp", "1.0"): 10,
    ("tcp", "1.1"): 13,
    ("udp", "1.0"): 7,
    ("udp", "1.1"): 10,
    ("rdma", "1.0"): 20,
    ("rdma", "1.1"): 20,
}
_KNOWN_STATVERS = frozenset({"1.0", "1.1"})

#: ``events:`` indexes (after the key) of NFSIOS_CONGESTIONWAIT, SHORTREAD,
#: SHORTWRITE and DELAY; the line must reach the last one.
EVENT_FIELDS = (19, 23, 24, 25)
#: ``bytes:`` NORMALREAD .. WRITEPAGES.
BYTES_FIELD_COUNT = 8

# Positions in a per-op line (parts[0] is "READ:"): ops, ntrans, timeouts,
# bytes_sent, bytes_recv, queue, rtt, execute[, errors].
_OP_MIN_PARTS = 9

# Lane tuple layout; None where the transport has no such field (UDP has no
# connection, RDMA and statvers 1.0 have no slot high-water mark).
LANE_CONNECT, LANE_IDLE, LANE_SENDS, LANE_RECVS, LANE_BAD_XIDS, LANE_BACKLOG, LANE_MAX_SLOTS = range(7)

# Per-op value layout.
OP_COUNT, OP_TIMEOUTS, OP_RTT_MS, OP_EXE_MS, OP_BYTES_SENT, OP_BYTES_RECV = range(6)


@dataclass
class VolumeStats:
    """Everything reported for one volume, merged over its blocks."""

    ops: dict[str, list[int]] = field(default_factory=dict)
    lanes: dict[int, list[int | None]] = field(default_factory=dict)
    backlog: int | None = None
    age: int | None = None
    events: list[int] | None = None
    bytes: list[int] | None = None


@dataclass
class ParseResult:
    volumes: dict[str, VolumeStats] = field(default_factory=dict)
    #: Malformed lines/blocks per kind (STATS, XPRT, EVENTS).
    errors: dict[str, int] = field(default_factory=lambda: {STATS: 0, XPRT: 0, EVENTS: 0})
    #: Short descriptions of the first few problems, for the log.
    problems: list[str] = field(default_factory=list)

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        if len(self.problems) < 10:
            self.problems.append(message[:200])


@dataclass(frozen=True)
class ParseOptions:
    #: Volume-id pattern; None when volume ids are disabled.
    pattern: re.Pattern[str] | None
    #: Per-op line keys to report, e.g. {"READ:": "read"}.
    operations: dict[str, str]
    #: Label mounts without a volume id by their export (``server:/path``)
    #: instead of skipping them.
    label_unmatched_by_export: bool


def operation_keys(names: list[str]) -> dict[str, str]:
    """Map configured op names to (line key, label value): READ -> ("READ:", "read")."""
    return {n.strip().upper() + ":": n.strip().lower() for n in names if n.strip()}


def parse(text: str, options: ParseOptions) -> ParseResult:
    result = ParseResult()
    lines = text.split("\n")
    if lines[-1]:
        _drop_unterminated_line(lines, result)
    starts = [i for i, line in enumerate(lines) if line.startswith("device ")]
    first = starts[0] if starts else len(lines)
    if any(line.strip() for line in lines[:first]):
        result.error(STATS, "text before the first 'device' line")
    starts.append(len(lines))
    for begin, end in itertools.pairwise(starts):
        try:
            _parse_block(lines, begin, end, options, result)
        except Exception as exc:  # noqa: BLE001 - one bad block must not hide the others
            result.error(STATS, f"line {begin + 1}: block skipped: {type(exc).__name__}: {exc}")
    return result


_KIND_OF_KEY = {"xprt:": XPRT, "events:": EVENTS, "bytes:": EVENTS, "age:": EVENTS}


def _drop_unterminated_line(lines: list[str], result: ParseResult) -> None:
    """Drop a last line that has no newline: the kernel ends every line.

    Without a newline the line was cut (a file read while it was rewritten,
    or a size limit), and a cut number is a wrong number, not a smaller one.
    Other keys (a stray ``impl_id`` continuation) carry nothing we report.
    """
    parts = lines[-1].split(None, 1)
    key = parts[0] if parts else ""
    kind = _KIND_OF_KEY.get(key, STATS if key.endswith(":") and key[:-1].isupper() else None)
    if kind is not None:
        result.error(kind, f"line {len(lines)}: {key} line cut off (no newline at end of file)")
    lines[-1] = ""


def _block_volume(header: list[str], options: ParseOptions) -> str | None:
    device = header[1]
    # The kernel octal-escapes space, tab, newline and backslash in the
    # device; target discovery decodes /proc/<pid>/mounts the same way, so
    # the id is taken from the decoded device to agree with nfs_latency.
    found = volume_id(unescape_mount_field(device) if "\\" in device else device, options.pattern)
    if found is not None:
        return found
    return device if options.label_unmatched_by_export else None


def _parse_block(lines: list[str], begin: int, end: int, options: ParseOptions, result: ParseResult) -> None:
    header = lines[begin].split()
    if (
        len(header) < 8
        or header[2] != "mounted"
        or header[3] != "on"
        or header[5] != "with"
        or header[6] != "fstype"
    ):
        result.error(STATS, f"line {begin + 1}: malformed device line")
        return
    if header[7] not in NFS_FSTYPES:
        return
    volume = _block_volume(header, options)
    if volume is None:
        return
    if len(volume) > MAX_LABEL_LENGTH:
        result.error(STATS, f"line {begin + 1}: volume id longer than {MAX_LABEL_LENGTH} characters")
        return
    statvers = "1.1"
    if len(header) > 8 and header[8].startswith("statvers="):
        statvers = header[8][9:]

    stats = result.volumes.get(volume)
    if stats is None:
        stats = result.volumes[volume] = VolumeStats()
    wanted_ops = options.operations
    lane_idx = 0
    backlog_sum = 0
    backlog_complete = True

    for lineno in range(begin + 1, end):
        parts = lines[lineno].split()
        if not parts:
            continue
        key = parts[0]
        if key in wanted_ops:
            if len(parts) < _OP_MIN_PARTS:
                result.error(STATS, f"line {lineno + 1}: {key} line has {len(parts) - 1} numbers, need 8")
                continue
            try:
                values = [
                    int(parts[1]),
                    int(parts[3]),
                    int(parts[7]),
                    int(parts[8]),
                    int(parts[4]),
                    int(parts[5]),
                ]
            except ValueError:
                result.error(STATS, f"line {lineno + 1}: {key} line has a non-numeric field")
                continue
            if not _in_range(values):
                result.error(STATS, f"line {lineno + 1}: {key} line has a value outside 0..2^64-1")
                continue
            label = wanted_ops[key]
            old = stats.ops.get(label)
            stats.ops[label] = values if old is None else _max_list(old, values)
        elif key == "xprt:":
            idx = lane_idx
            # The index advances even for a bad line so later lanes keep
            # their identity (xprt_idx must not shift between scrapes).
            lane_idx += 1
            lane = _parse_xprt(parts, statvers) if idx < MAX_LANES else None
            if lane is None:
                backlog_complete = False
                result.error(XPRT, f"line {lineno + 1}: malformed xprt line")
                continue
            backlog_sum += lane[LANE_BACKLOG] or 0
            old_lane = stats.lanes.get(idx)
            stats.lanes[idx] = lane if old_lane is None else _max_optional(old_lane, lane)
        elif key == "events:":
            if len(parts) <= EVENT_FIELDS[-1]:
                result.error(EVENTS, f"line {lineno + 1}: events line has {len(parts) - 1} numbers, need 25")
                continue
            try:
                events = [int(parts[i]) for i in EVENT_FIELDS]
            except ValueError:
                result.error(EVENTS, f"line {lineno + 1}: events line has a non-numeric field")
                continue
            if not _in_range(events):
                result.error(EVENTS, f"line {lineno + 1}: events value outside 0..2^64-1")
                continue
            stats.events = events if stats.events is None else _max_list(stats.events, events)
        elif key == "bytes:":
            if len(parts) <= BYTES_FIELD_COUNT:
                result.error(EVENTS, f"line {lineno + 1}: bytes line has {len(parts) - 1} numbers, need 8")
                continue
            try:
                counts = [int(x) for x in parts[1 : BYTES_FIELD_COUNT + 1]]
            except ValueError:
                result.error(EVENTS, f"line {lineno + 1}: bytes line has a non-numeric field")
                continue
            if not _in_range(counts):
                result.error(EVENTS, f"line {lineno + 1}: bytes value outside 0..2^64-1")
                continue
            stats.bytes = counts if stats.bytes is None else _max_list(stats.bytes, counts)
        elif key == "age:":
            try:
                age = int(parts[1])
            except (ValueError, IndexError):
                result.error(EVENTS, f"line {lineno + 1}: malformed age line")
                continue
            if not 0 <= age <= U64_MAX:
                result.error(EVENTS, f"line {lineno + 1}: age outside 0..2^64-1")
                continue
            stats.age = age if stats.age is None else max(stats.age, age)

    if lane_idx and backlog_complete:
        stats.backlog = backlog_sum if stats.backlog is None else max(stats.backlog, backlog_sum)


def _parse_xprt(parts: list[str], statvers: str) -> list[int | None] | None:
    """One ``xprt:`` line as a lane list, or None when it is malformed."""
    if len(parts) < 2:
        return None
    proto = parts[1]
    version = statvers if statvers in _KNOWN_STATVERS else "1.1"
    need = _XPRT_MIN_FIELDS.get((proto, version))
    if need is None or len(parts) - 2 < need:
        return None
    n = parts
    lane: list[int | None]
    try:
        if proto == "udp":
            # srcport bind sends recvs bad_xids req_u bklog_u [max_slots sending_u pending_u]
            lane = [
                None,
                None,
                int(n[4]),
                int(n[5]),
                int(n[6]),
                int(n[8]),
                int(n[9]) if version == "1.1" else None,
            ]
        else:
            # tcp and rdma share the first ten: srcport bind connect connect_time
            # idle sends recvs bad_xids req_u bklog_u; tcp 1.1 adds max_slots.
            max_slots = int(n[12]) if proto == "tcp" and version == "1.1" else None
            lane = [int(n[4]), int(n[6]), int(n[7]), int(n[8]), int(n[9]), int(n[11]), max_slots]
    except ValueError:
        return None
    for value in lane:
        if value is not None and not 0 <= value <= U64_MAX:
            return None
    return lane


def _in_range(values: list[int]) -> bool:
    return min(values) >= 0 and max(values) <= U64_MAX


def _max_list(a: list[int], b: list[int]) -> list[int]:
    return [x if x >= y else y for x, y in zip(a, b, strict=True)]


def _max_optional(a: list[int | None], b: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    for x, y in zip(a, b, strict=True):
        if x is None:
            out.append(y)
        elif y is None or x >= y:
            out.append(x)
        else:
            out.append(y)
    return out
