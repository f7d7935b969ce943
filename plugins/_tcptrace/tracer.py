"""A loaded TCP-tracing program and the filter maps it reads.

Holds what both plugins do the same way: pick tracepoints or kprobes per
hook, size and load the program, keep the kernel's port bitmap, address
pre-filter and address set equal to the wanted targets (updated in place,
never reloaded), and read the per-address counters as raw bytes.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crusoe_metrics_exporter.ebpf import kernel
from crusoe_metrics_exporter.ebpf.runtime import LoadedBpf
from crusoe_metrics_exporter.ebpf.spec import BpfSpec
from crusoe_metrics_exporter.plugins._tcptrace import btf, program
from crusoe_metrics_exporter.plugins._tcptrace.addresses import (
    ADDR_KEY_SIZE,
    address_key,
    address_text,
    fold_bitmap,
    port_bitmap,
    word_bytes,
)

log = logging.getLogger(__name__)

#: Generations the miss cache tells apart (6 low bits of a socket address).
MISS_GENERATIONS = 64
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def send_tracepoint_available() -> bool:
    """Whether this kernel has sock:sock_send_length (6.3 and later, or a backport)."""
    return kernel.tracepoint_id("sock", "sock_send_length") is not None


def make_spec(name: str, body: str, bounds_seconds: tuple[float, ...], *, defines: Mapping[str, int],
              max_targets: int, kprobes_only: bool = False) -> BpfSpec:
    offsets, origin = btf.sock_common_offsets()
    if origin != "btf":
        log.warning("socket field offsets: %s", origin)
    return program.bpf_spec(
        name, body, bounds_seconds,
        defines={**defines, "TT_MAX_TARGETS": max_targets},
        offset_cflags=btf.offset_cflags(offsets),
        send_tracepoint=send_tracepoint_available(),
        kprobes_only=kprobes_only,
    )


def plan_spec(name: str) -> BpfSpec:
    """Programs only (no source): what ``attach_plan`` needs in a support check."""
    return BpfSpec(name=name, source="", programs=program.program_specs(send_tracepoint_available()))


def target_capacity(initial: int) -> int:
    """Address-set size: room for discovery to grow without reloading."""
    return max(64, 4 * initial)


@dataclass(frozen=True)
class FilterResult:
    watched: tuple[str, ...]
    #: Addresses that did not fit into the kernel set.
    dropped: tuple[str, ...]
    #: Addresses no longer watched; their kernel counters were deleted.
    removed: tuple[str, ...]


class TcpTracer:
    def __init__(self, loaded: LoadedBpf, max_targets: int) -> None:
        self.loaded = loaded
        self.max_targets = max_targets
        self._targets = loaded.map("targets")
        self._zero = bytes(self._targets.value_size)
        self._lock = threading.Lock()
        self._addresses: set[str] = set()
        self._port_words: dict[int, int] = {}
        self._fold_words: dict[int, int] = {}
        self._clamped = 0

    @classmethod
    def load(cls, ebpf_service: Any, plugin: str, spec: BpfSpec, max_targets: int, *, mount_tracefs: bool = True,
             state_dir: Any = None) -> TcpTracer:
        """Load through the shared ``ebpf`` service (raises BpfUnavailable)."""
        loaded = ebpf_service.load(plugin, spec, mount_tracefs=mount_tracefs, state_dir=state_dir)
        return cls(loaded, max_targets)

    def _sync_words(self, name: str, current: dict[int, int], wanted: dict[int, int]) -> dict[int, int]:
        for word in set(current) | set(wanted):
            bits = wanted.get(word, 0)
            if current.get(word, 0) != bits:
                self.loaded.map(name).update(_U32.pack(word), word_bytes(bits))
        return {w: b for w, b in wanted.items() if b}

    def set_targets(self, addresses: Iterable[str], ports: Iterable[int]) -> FilterResult:
        """Make the kernel filter watch exactly these addresses and ports, in place.

        New addresses start with zeroed counters; removed ones lose theirs
        (fold them first).
        """
        wanted_ports = port_bitmap(ports)
        wanted = sorted(set(addresses))
        with self._lock:
            removed = sorted(self._addresses - set(wanted))
            kept = self._addresses - set(removed)
            dropped: list[str] = []
            added: list[str] = []
            for address in wanted:
                if address in kept:
                    continue
                if len(kept) + len(added) >= self.max_targets:
                    dropped.append(address)
                    continue
                added.append(address)
            final = kept | set(added)
            # Counters exist before the pre-filter can let traffic reach them,
            # and the pre-filter closes before counters go away.
            for address in added:
                self._targets.update(address_key(address), self._zero)
            self._fold_words = self._sync_words(
                "addr_bits", self._fold_words, fold_bitmap(address_key(a) for a in final)
            )
            for address in removed:
                self._targets.delete(address_key(address))
            self._port_words = self._sync_words("port_bits", self._port_words, wanted_ports)
            self._addresses = final
            self._invalidate_misses()
            return FilterResult(tuple(sorted(final)), tuple(dropped), tuple(removed))

    def _invalidate_misses(self) -> None:
        """Make every cached "does not match" verdict stale: the filter may now match those sockets."""
        generations = self.loaded.map("tt_generation")
        raw = generations.lookup(_U32.pack(0))
        current = _U64.unpack(raw)[0] if raw is not None else 0
        following = current + 1
        if following % MISS_GENERATIONS == 0:
            # The 6-bit generation wraps: entries 64 changes old would look
            # current again, so empty the cache first.
            misses = self.loaded.map("tt_misses")
            zero = _U64.pack(0)
            for slot in range(misses.max_entries):
                misses.update(_U32.pack(slot), zero)
        generations.update(_U32.pack(0), _U64.pack(following))

    def read_stats(self) -> list[tuple[bytes, bytes]]:
        return self._targets.items()

    def new_clamped(self) -> int:
        """Samples recorded at the clamp since the last call."""
        raw = self.loaded.map("problems").lookup(_U32.pack(0))
        total = _U64.unpack(raw)[0] if raw is not None and len(raw) == 8 else self._clamped
        new = max(0, total - self._clamped)
        self._clamped = total
        return new



def key_address(key: bytes) -> str:
    if len(key) != ADDR_KEY_SIZE:
        raise ValueError(f"stats key of {len(key)} bytes, expected {ADDR_KEY_SIZE}")
    return address_text(key)
