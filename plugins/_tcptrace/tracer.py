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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from crusoe_metrics_exporter.plugins._tcptrace import program
from crusoe_metrics_exporter.plugins._tcptrace.addresses import (
    ADDR_KEY_SIZE,
    address_key,
    address_text,
    fold_bitmap,
    port_bitmap,
    word_bytes,
)
from crusoe_metrics_exporter.sdk import BpfSpec, EbpfRuntime, LoadedBpf, tracepoint_exists, tracepoint_has_field

log = logging.getLogger(__name__)

#: Generations the verdict cache tells apart (6 low bits of a socket address).
MISS_GENERATIONS = 64
#: Counter slots are 16-bit in the verdict cache; 0 means "does not match".
MAX_SLOTS = 65535
#: A slot taken back is handed out again only after this long, so a program
#: that read a verdict just before the change has long finished with it.
SLOT_QUARANTINE_SECONDS = 1.0
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def send_tracepoint_available() -> bool:
    """Whether this kernel has sock:sock_send_length (6.3 and later, or a backport)."""
    return tracepoint_exists("sock", "sock_send_length")


def make_spec(name: str, body: str, bounds_seconds: tuple[float, ...], *, defines: Mapping[str, int],
              max_targets: int, kinds: tuple[str, ...] = ("tp_btf", "tracepoint", "kprobe")) -> BpfSpec:
    extra = {"TT_MAX_TARGETS": max_targets}
    if tracepoint_has_field("tcp", "tcp_retransmit_skb", "err"):
        # This kernel's tcp_retransmit_skb fires for failed attempts too.
        extra["TT_RETRANSMIT_ERR"] = 1
    return program.bpf_spec(
        name, body, bounds_seconds,
        defines={**defines, **extra},
        send_tracepoint=send_tracepoint_available(),
        kinds=kinds,
    )


def plan_spec(name: str) -> BpfSpec:
    """Programs only (no source): what ``attach_plan`` needs in a support check."""
    return BpfSpec(name=name, source="", programs=program.program_specs(send_tracepoint_available()))


#: Ways per set of the per-socket table (TT_SOCKET_WAYS in tcptrace.h).
SOCKET_WAYS = 4


def socket_slots(capacity: int) -> int:
    """Entries of the per-socket table (TT_SOCKETS): ``capacity`` rounded up to a power of two, at least one set."""
    return max(SOCKET_WAYS, 1 << (max(1, capacity) - 1).bit_length())


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
    def __init__(self, loaded: LoadedBpf, max_targets: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < max_targets <= MAX_SLOTS:
            raise ValueError(f"target capacity {max_targets} out of range 1..{MAX_SLOTS}")
        self.loaded = loaded
        self.max_targets = max_targets
        self._targets = loaded.map("targets")
        self._counters = loaded.map("counters")
        self._zero = bytes(self._counters.value_size)
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: set[str] = set()
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = list(range(max_targets, 0, -1))
        self._quarantine: list[tuple[float, int]] = []
        self._port_words: dict[int, int] = {}
        self._fold_words: dict[int, int] = {}
        self._clamped = 0

    @classmethod
    def load(cls, ebpf: EbpfRuntime, plugin: str, spec: BpfSpec, max_targets: int) -> TcpTracer:
        """Load through the shared eBPF runtime (raises BpfUnavailable)."""
        loaded = ebpf.load(plugin, spec)
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
        # Numeric order: which addresses miss out when full is predictable.
        wanted = sorted(set(addresses), key=address_key)
        with self._lock:
            now = self._clock()
            ready = [slot for since, slot in self._quarantine if now - since >= SLOT_QUARANTINE_SECONDS]
            self._quarantine = [(t, slot) for t, slot in self._quarantine if now - t < SLOT_QUARANTINE_SECONDS]
            self._free.extend(ready)
            self._free.sort(reverse=True)

            removed = sorted(self._addresses - set(wanted))
            for address in removed:
                self._targets.delete(address_key(address))
                self._quarantine.append((now, self._slot_of.pop(address)))
                self._addresses.discard(address)
            dropped: list[str] = []
            for address in wanted:
                if address in self._addresses:
                    continue
                if not self._free:
                    dropped.append(address)
                    continue
                slot = self._free.pop()
                # Zeroed before the address can reach it.
                self._counters.update(_U32.pack(slot), self._zero)
                self._targets.update(address_key(address), _U32.pack(slot))
                self._slot_of[address] = slot
                self._addresses.add(address)
            self._fold_words = self._sync_words(
                "addr_bits", self._fold_words, fold_bitmap(address_key(a) for a in self._addresses)
            )
            self._port_words = self._sync_words("port_bits", self._port_words, wanted_ports)
            self._invalidate_verdicts()
            return FilterResult(tuple(sorted(self._addresses)), tuple(dropped), tuple(removed))

    def _invalidate_verdicts(self) -> None:
        """Make every cached verdict stale: the filter may now decide otherwise for those sockets."""
        generations = self.loaded.map("tt_generation")
        raw = generations.lookup(_U32.pack(0))
        current = _U64.unpack(raw)[0] if raw is not None else 0
        following = current + 1
        if following % MISS_GENERATIONS == 0:
            # The 6-bit generation wraps: entries 64 changes old would look
            # current again, so empty the cache first.
            verdicts = self.loaded.map("tt_verdicts")
            zero = _U64.pack(0)
            for index in range(verdicts.max_entries):
                verdicts.update(_U32.pack(index), zero)
        generations.update(_U32.pack(0), _U64.pack(following))

    def read_stats(self) -> list[tuple[bytes, bytes]]:
        """(address key, counters) of every watched address."""
        with self._lock:
            slots = list(self._slot_of.items())
        out = []
        for address, slot in slots:
            value = self._counters.lookup(_U32.pack(slot))
            if value is not None:
                out.append((address_key(address), value))
        return out

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
