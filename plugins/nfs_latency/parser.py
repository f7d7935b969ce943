"""Pure functions over the nfs_latency maps and the volume labelling rule."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from crusoe_metrics_exporter.plugins._tcptrace.tracer import key_address

#: The seed's bounds: round(500 * 100^(k/19)) microseconds, 0.5 ms .. 50 ms.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.000637, 0.000812, 0.001035, 0.001318, 0.00168, 0.002141, 0.002728, 0.003476, 0.004429,
    0.005644, 0.007192, 0.009165, 0.011679, 0.014882, 0.018963, 0.024165, 0.030792, 0.039238, 0.05,
)
#: Finite buckets plus the overflow slot.
SLOTS = len(BUCKETS) + 1

#: struct tt_stats (nfs_latency.c) { u64 latency_ns; u64 retransmits; u64 hist[SLOTS]; }, the counters map value
STATS_VALUE = struct.Struct(f"<QQ{SLOTS}Q")
STATS_KEY_SIZE = 16
#: tt_sockets value: struct tt_sock { u64 sk; u64 start of the outstanding request (0 = none) }
SOCKET_VALUE_SIZE = 16

UNKNOWN_VOLUME = "unknown"
SHARED_VOLUME = "shared"
#: Above this many volumes on one server the label says "shared" instead of listing them.
MAX_LISTED_VOLUMES = 8

# Vector layout used for accumulation: latency_ns, retransmits, hist...
VECTOR_WIDTH = 2 + SLOTS


class NfsReading(NamedTuple):
    address: str
    latency_ns: int
    retransmits: int
    counts: tuple[int, ...]

    @property
    def vector(self) -> tuple[int, ...]:
        return (self.latency_ns, self.retransmits, *self.counts)


def parse_stats_entry(key: bytes, value: bytes) -> NfsReading:
    """One address's counters; raises ValueError on bytes of the wrong shape."""
    if len(key) != STATS_KEY_SIZE:
        raise ValueError(f"stats key of {len(key)} bytes, expected {STATS_KEY_SIZE}")
    if len(value) != STATS_VALUE.size:
        raise ValueError(f"stats value of {len(value)} bytes, expected {STATS_VALUE.size}")
    fields = STATS_VALUE.unpack(value)
    return NfsReading(key_address(key), fields[0], fields[1], tuple(fields[2:]))


def volume_label(volumes: Sequence[str], enabled: bool = True, unidentified: bool = False) -> str:
    """What ``volume_id`` says for traffic to one server address.

    A TCP connection to an NFS server is shared by every mount of that
    server, so the traffic cannot be split per volume: the label names the
    volume when the address serves exactly one, lists them ("a+b", sorted)
    when it serves a few, says "shared" when it serves more than
    MAX_LISTED_VOLUMES and "unknown" when no mount with a volume id uses it.
    ``unidentified``: a mount without a volume id also uses the address, so
    "+unknown" ends the list (the traffic is not the named volumes' alone).
    """
    if not enabled:
        return UNKNOWN_VOLUME
    unique = sorted({v for v in volumes if v})
    if not unique:
        return UNKNOWN_VOLUME
    if len(unique) > MAX_LISTED_VOLUMES:
        return SHARED_VOLUME
    if unidentified:
        unique.append(UNKNOWN_VOLUME)
    return "+".join(unique)
