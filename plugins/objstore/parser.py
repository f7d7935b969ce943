"""Pure functions over the objstore maps."""

from __future__ import annotations

import struct
from typing import NamedTuple

from crusoe_metrics_exporter.plugins._tcptrace.tracer import key_address

#: The seed's real constants: round(1000 * 10^(k/6)) microseconds, 1 ms .. 1.468 s.
BUCKETS: tuple[float, ...] = (
    0.001, 0.001468, 0.002154, 0.003162, 0.004642, 0.006813, 0.01, 0.014678, 0.021544, 0.031623,
    0.046416, 0.068129, 0.1, 0.14678, 0.215443, 0.316228, 0.464159, 0.681292, 1.0, 1.468,
)
SLOTS = len(BUCKETS) + 1

#: struct tt_stats (objstore.c), the counters map value:
#: { u64 latency_ns, retransmits, bytes_sent, bytes_recv; u64 hist[SLOTS]; }
STATS_VALUE = struct.Struct(f"<QQQQ{SLOTS}Q")
STATS_KEY_SIZE = 16
#: tt_sockets value: struct tt_sock { u64 sk; struct { u64 start_ns; u64 last_recv_ns; } state; }
SOCKET_VALUE_SIZE = 24
VECTOR_WIDTH = 4 + SLOTS


class ObjstoreReading(NamedTuple):
    address: str
    latency_ns: int
    retransmits: int
    bytes_sent: int
    bytes_recv: int
    counts: tuple[int, ...]

    @property
    def vector(self) -> tuple[int, ...]:
        return (self.latency_ns, self.retransmits, self.bytes_sent, self.bytes_recv, *self.counts)


def parse_stats_entry(key: bytes, value: bytes) -> ObjstoreReading:
    """One address's counters; raises ValueError on bytes of the wrong shape."""
    if len(key) != STATS_KEY_SIZE:
        raise ValueError(f"stats key of {len(key)} bytes, expected {STATS_KEY_SIZE}")
    if len(value) != STATS_VALUE.size:
        raise ValueError(f"stats value of {len(value)} bytes, expected {STATS_VALUE.size}")
    f = STATS_VALUE.unpack(value)
    return ObjstoreReading(key_address(key), f[0], f[1], f[2], f[3], tuple(f[4:]))
