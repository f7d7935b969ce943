"""A loaded TCP-tracing program and the filter maps it reads.

Holds what both plugins do the same way: pick tracepoints or kprobes per
hook, size and load the program, keep the kernel's port bitmap and address
set equal to the wanted targets (updated in place, never reloaded), read the
stats map as raw bytes and report kernel-side problems.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace import bccloader, btf, program
from crusoe_metrics_exporter.plugins._tcptrace.addresses import (
    ADDR_KEY_SIZE,
    address_key,
    address_text,
    port_bitmap,
    word_bytes,
)

log = logging.getLogger(__name__)

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
PROBLEM_MAP_FULL = 0
PROBLEM_CLAMPED = 1


def tracepoint_available(category: str, event: str) -> bool:
    return any((root / "events" / category / event / "id").is_file() for root in TRACEFS_ROOTS)


def kernel_methods() -> tuple[list[str], list[str]]:
    """(roles served by tracepoints, roles needing kprobes) on this kernel."""
    return program.choose_methods({h.tracepoint: tracepoint_available(*h.tracepoint) for h in program.HOOKS})


def target_capacity(initial: int) -> int:
    """Address-set size: room for discovery to grow without reloading."""
    return max(64, 4 * initial)


@dataclass(frozen=True)
class FilterResult:
    watched: tuple[str, ...]
    #: Addresses that did not fit into the kernel set.
    dropped: tuple[str, ...]
    #: Addresses no longer watched (their stats entries may be retired).
    removed: tuple[str, ...]


class TcpTracer:
    def __init__(self, loaded: bccloader.LoadedTcpProgram, max_targets: int, stats_map: str = "stats") -> None:
        self._prog = loaded
        self.max_targets = max_targets
        self._stats_map = stats_map
        self._lock = threading.Lock()
        self._addresses: set[str] = set()
        self._port_words: dict[int, int] = {}
        self._problems = [0, 0]

    @classmethod
    def load(cls, body: str, bounds_seconds: tuple[float, ...], defines: Mapping[str, int],
             max_targets: int) -> TcpTracer:
        tps, kps = kernel_methods()
        offsets, origin = btf.sock_common_offsets()
        if origin != "btf":
            log.warning("socket field offsets: %s", origin)
        source = program.build_source(body, bounds_seconds)
        cflags = program.build_cflags(
            {**defines, "TT_MAX_TARGETS": max_targets}, btf.offset_cflags(offsets), tps, kps
        )
        return cls(bccloader.load(source, cflags, tps, kps), max_targets)

    @property
    def statuses(self) -> list[bccloader.ProgramState]:
        return self._prog.statuses

    def attach_summary(self) -> str:
        return ", ".join(f"{s.role}={s.target}" for s in self._prog.statuses if s.attached)

    def set_targets(self, addresses: Iterable[str], ports: Iterable[int]) -> FilterResult:
        """Make the kernel filter watch exactly these addresses and ports (in place)."""
        wanted_words = port_bitmap(ports)
        wanted = sorted(set(addresses))
        with self._lock:
            for word in set(self._port_words) | set(wanted_words):
                bits = wanted_words.get(word, 0)
                if self._port_words.get(word, 0) != bits:
                    self._prog.map_update("port_bits", _U32.pack(word), word_bytes(bits))
            self._port_words = {w: b for w, b in wanted_words.items() if b}
            removed = sorted(self._addresses - set(wanted))
            for address in removed:
                self._prog.map_delete("targets", address_key(address))
                self._addresses.discard(address)
            dropped: list[str] = []
            for address in wanted:
                if address in self._addresses:
                    continue
                if len(self._addresses) >= self.max_targets:
                    dropped.append(address)
                    continue
                self._prog.map_update("targets", address_key(address), b"\x01")
                self._addresses.add(address)
            return FilterResult(tuple(sorted(self._addresses)), tuple(dropped), tuple(removed))

    def read_stats(self) -> list[tuple[bytes, bytes]]:
        return self._prog.map_items(self._stats_map)

    def retire(self, addresses: Iterable[str]) -> None:
        """Delete the kernel stats of addresses that are no longer watched."""
        for address in addresses:
            self._prog.map_delete(self._stats_map, address_key(address))

    def new_problems(self) -> tuple[int, int]:
        """Increase of (stats map full, samples clamped) since the last call."""
        out = []
        for index in (PROBLEM_MAP_FULL, PROBLEM_CLAMPED):
            raw = self._prog.map_lookup("problems", _U32.pack(index))
            total = _U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else self._problems[index]
            out.append(max(0, total - self._problems[index]))
            self._problems[index] = total
        return out[0], out[1]

    def map_sizes(self, name: str) -> tuple[int, int, int]:
        return self._prog.map_sizes(name)

    def close(self) -> None:
        self._prog.close()


def key_address(key: bytes) -> str:
    if len(key) != ADDR_KEY_SIZE:
        raise ValueError(f"stats key of {len(key)} bytes, expected {ADDR_KEY_SIZE}")
    return address_text(key)
