"""Pure functions for the RPC-layer source: map layouts, mountinfo, per-superblock labels.

Nothing here touches the kernel; the collector glue hands in bytes and text.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from crusoe_metrics_exporter.plugins.nfs_latency.parser import BUCKETS, MAX_LISTED_VOLUMES, SHARED_VOLUME
from crusoe_metrics_exporter.sdk import unescape_mount_field, volume_id


def _nice_bounds(first: float, last: float) -> tuple[float, ...]:
    """1, 1.5, 2, 3, 5, 7 per decade (no step wider than 5/3) from ``first`` to ``last`` inclusive."""
    out: list[float] = []
    for exponent in range(-9, 4):
        for mantissa in (1, 1.5, 2, 3, 5, 7):
            value = round(mantissa * 10.0**exponent, 12)
            if first <= value < last:
                out.append(value)
    out.append(last)
    return tuple(out)


#: Bounds of the per-RPC histograms (seconds): 50 µs .. 60 s.
RPC_BUCKETS: tuple[float, ...] = _nice_bounds(50e-6, 60.0)
RPC_SLOTS = len(RPC_BUCKETS) + 1
#: The Go exporter's NFS bounds, for its histogram family fed from the RPC layer.
SEED_BUCKETS: tuple[float, ...] = BUCKETS
SEED_SLOTS = len(SEED_BUCKETS) + 1

#: struct rpc_key (rpc_latency.c): u32 clid, u32 gen, char op[24].
OP_NAME_LEN = 24
RPC_KEY = struct.Struct(f"<II{OP_NAME_LEN}s")
#: struct rpc_stats: count, errors, retransmits, queue_ns, rtt_ns, execute_ns,
#: queue[RPC_SLOTS], rtt[RPC_SLOTS], execute[RPC_SLOTS], seed_rtt[SEED_SLOTS].
RPC_SCALARS = 6
RPC_VALUE = struct.Struct(f"<{RPC_SCALARS + 3 * RPC_SLOTS + SEED_SLOTS}Q")
RPC_WIDTH = RPC_SCALARS + 3 * RPC_SLOTS + SEED_SLOTS
COUNT, ERRORS, RETRANSMITS, QUEUE_NS, RTT_NS, EXECUTE_NS = range(RPC_SCALARS)
QUEUE_HIST = slice(RPC_SCALARS, RPC_SCALARS + RPC_SLOTS)
RTT_HIST = slice(RPC_SCALARS + RPC_SLOTS, RPC_SCALARS + 2 * RPC_SLOTS)
EXECUTE_HIST = slice(RPC_SCALARS + 2 * RPC_SLOTS, RPC_SCALARS + 3 * RPC_SLOTS)
SEED_HIST = slice(RPC_SCALARS + 3 * RPC_SLOTS, RPC_WIDTH)
#: struct rpc_probe: tid, hits, clid, gen, mixed, pad.
PROBE_VALUE = struct.Struct("<IIIIII")
#: client_gen slots: client ids the kernel program can tell generations of.
MAX_CLIENT_IDS = 16384
U32 = struct.Struct("<I")

_OP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,22}")


class ClientKey(NamedTuple):
    """One RPC client's life: the kernel's client id and how often that id was freed before."""

    clid: int
    gen: int


class RpcEntry(NamedTuple):
    client: ClientKey
    #: The procedure as the kernel names it (``READ``, ``GETATTR``, ...).
    op: str
    vector: tuple[int, ...]


class ProbeResult(NamedTuple):
    tid: int
    hits: int
    client: ClientKey
    mixed: bool


def parse_rpc_entry(key: bytes, value: bytes) -> RpcEntry:
    """One (client, procedure) entry of ``rpc_stats``; ValueError when malformed."""
    if len(key) != RPC_KEY.size:
        raise ValueError(f"rpc_stats key of {len(key)} bytes, expected {RPC_KEY.size}")
    if len(value) != RPC_VALUE.size:
        raise ValueError(f"rpc_stats value of {len(value)} bytes, expected {RPC_VALUE.size}")
    clid, gen, raw = RPC_KEY.unpack(key)
    name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    if not _OP_NAME.fullmatch(name):
        raise ValueError(f"rpc_stats key with procedure name {name!r}")
    return RpcEntry(ClientKey(clid, gen), name, RPC_VALUE.unpack(value))


def parse_generation(value: bytes | None) -> int:
    """A ``client_gen`` slot: how often that client id was freed (0 beyond the array or when unreadable)."""
    return U32.unpack(value)[0] if value is not None and len(value) == 4 else 0


def parse_probe(value: bytes) -> ProbeResult:
    if len(value) != PROBE_VALUE.size:
        raise ValueError(f"probe value of {len(value)} bytes, expected {PROBE_VALUE.size}")
    tid, hits, clid, gen, mixed, _ = PROBE_VALUE.unpack(value)
    return ProbeResult(tid, hits, ClientKey(clid, gen), bool(mixed))


def armed_probe(tid: int) -> bytes:
    return PROBE_VALUE.pack(tid, 0, 0, 0, 0, 0)


def go_vector(vector: Sequence[int]) -> tuple[int, ...]:
    """The Go exporter's families from one entry: (latency_ns = RTT sum, retransmits = 0, its RTT buckets)."""
    return (vector[RTT_NS], 0, *vector[SEED_HIST])


def valid_operation_name(name: str) -> bool:
    return _OP_NAME.fullmatch(name.strip()) is not None


# -- mountinfo ------------------------------------------------------------------------------------------------


NFS_FSTYPES = frozenset({"nfs", "nfs4"})


@dataclass(frozen=True)
class MountInfo:
    """One ``/proc/<pid>/mountinfo`` line."""

    mount_id: int
    #: ``major:minor`` of the superblock (st_dev of every file on it).
    dev: str
    mount_point: str
    fstype: str
    #: The source (device) field as the kernel writes it (octal escapes kept),
    #: the same text mountstats shows after ``device``.
    source: str
    super_options: tuple[str, ...]


def parse_mountinfo(text: str) -> tuple[list[MountInfo], int]:
    """Every well-formed line and how many were malformed.

    ``36 35 0:52 / /mnt/v rw,relatime shared:1 - nfs4 srv:/volumes/v rw,vers=4.2,proto=tcp``
    """
    out: list[MountInfo] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_id = int(fields[0])
            dev = fields[2]
            major, minor = dev.split(":")
            int(major), int(minor)
            fstype, source = fields[sep + 1], fields[sep + 2]
            options = tuple(o for o in fields[sep + 3].split(",") if o) if len(fields) > sep + 3 else ()
        except (ValueError, IndexError):
            bad += 1
            continue
        out.append(MountInfo(mount_id, dev, unescape_mount_field(fields[4]), fstype, source, options))
    return out, bad


@dataclass(frozen=True)
class Superblock:
    """One NFS superblock (one ``nfs_server``, one per-mount RPC client) and what it is called."""

    dev: str
    #: ``volume_id`` label value, as nfs_stats gives it for the same mounts.
    label: str
    #: ``protocol`` label value: the transport from ``proto=`` (tcp, udp, rdma).
    protocol: str
    #: Mount points, first one is where the discovery probe looks.
    mount_points: tuple[str, ...]
    mount_ids: frozenset[int]


def mount_label(source: str, pattern: re.Pattern[str] | None, label_unmatched_by_export: bool) -> str | None:
    """What nfs_stats calls the mount with this device (the same rule, so series join)."""
    found = volume_id(unescape_mount_field(source) if "\\" in source else source, pattern)
    if found is not None:
        return found
    return source if label_unmatched_by_export else None


def join_labels(labels: Iterable[str]) -> str:
    """One superblock mounted under several volume ids (subdirectories of one server filesystem share it)."""
    unique = sorted(set(labels))
    return SHARED_VOLUME if len(unique) > MAX_LISTED_VOLUMES else "+".join(unique)


def transport(options: Sequence[str]) -> str:
    for option in options:
        if option.startswith("proto="):
            value = option[6:]
            return value[:-1] if value.endswith("6") else value
    return "tcp"


def nfs_superblocks(
    mounts: Iterable[MountInfo], pattern: re.Pattern[str] | None, label_unmatched_by_export: bool
) -> dict[str, Superblock]:
    """NFS superblocks by ``major:minor``; one whose mounts all go unlabelled is left out."""
    grouped: dict[str, list[MountInfo]] = {}
    for mount in mounts:
        if mount.fstype in NFS_FSTYPES:
            grouped.setdefault(mount.dev, []).append(mount)
    out: dict[str, Superblock] = {}
    for dev, lines in grouped.items():
        labels = [lab for m in lines if (lab := mount_label(m.source, pattern, label_unmatched_by_export))]
        if not labels:
            continue
        out[dev] = Superblock(
            dev=dev,
            label=join_labels(labels),
            protocol=transport(lines[0].super_options),
            mount_points=tuple(m.mount_point for m in lines),
            mount_ids=frozenset(m.mount_id for m in lines),
        )
    return out
