"""The compiled programs on this kernel: struct sizes as Python expects, kprobe fallback verifies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.exporter_scrape import ebpf_unavailable

from crusoe_metrics_exporter.ebpf import BpfMap, BtfTracepoint, LoadedBpf, Tracepoint, attach_plan, kernel, verify_only
from crusoe_metrics_exporter.plugins._tcptrace.addresses import ADDR_KEY_SIZE
from crusoe_metrics_exporter.plugins._tcptrace.tracer import make_spec, plan_spec
from crusoe_metrics_exporter.plugins.nfs_latency import collector as nfs_collector
from crusoe_metrics_exporter.plugins.nfs_latency import parser as nfs_parser
from crusoe_metrics_exporter.plugins.objstore import collector as obj_collector
from crusoe_metrics_exporter.plugins.objstore import parser as obj_parser

pytestmark = pytest.mark.ebpf

REASON = ebpf_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING eBPF program checks: {REASON} !!!", allow_module_level=True)

PROGRAMS: dict[str, tuple[Callable[[], str], tuple[float, ...], dict[str, int]]] = {
    "nfs_latency": (
        nfs_collector.SOURCE.read_text,
        nfs_parser.BUCKETS,
        {"TT_SOCKETS": 1024, "NFS_CLAMP_NS": 60 * 10**9, "NFS_BUCKETS": nfs_parser.SLOTS},
    ),
    "objstore": (
        obj_collector.SOURCE.read_text,
        obj_parser.BUCKETS,
        {"TT_SOCKETS": 1024, "OBJ_CLAMP_NS": 600 * 10**9, "OBJ_BUCKETS": obj_parser.SLOTS},
    ),
}


def compile_and_load(name: str, kinds: tuple[str, ...] = ("tp_btf", "tracepoint", "kprobe")) -> LoadedBpf:
    read, bounds, defines = PROGRAMS[name]
    return verify_only(make_spec(name, read(), bounds, defines=defines, max_targets=64, kinds=kinds))


def sizes(m: BpfMap) -> tuple[int, int, int]:
    return m.key_size, m.value_size, m.max_entries


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_map_layouts_match_python(name: str) -> None:
    loaded = compile_and_load(name)
    try:
        assert sizes(loaded.map("port_bits")) == (4, 8, 1024)
        assert sizes(loaded.map("addr_bits")) == (4, 8, 1024)
        assert sizes(loaded.map("targets")) == (ADDR_KEY_SIZE, 4, 64)
        assert sizes(loaded.map("tt_verdicts")) == (4, 8, 4096)
        if name == "nfs_latency":
            assert sizes(loaded.map("counters")) == (4, nfs_parser.STATS_VALUE.size, 65)
            assert sizes(loaded.map("tt_sockets")) == (4, nfs_parser.SOCKET_VALUE_SIZE, 1024)
        else:
            assert sizes(loaded.map("counters")) == (4, obj_parser.STATS_VALUE.size, 65)
            assert sizes(loaded.map("tt_sockets")) == (4, obj_parser.SOCKET_VALUE_SIZE, 1024)
        # Tracepoint variants are compiled only for the hooks feature detection
        # gives a tracepoint on this kernel (all four on 6.3+, retransmit and close on 6.1).
        planned = {role for role, choice in attach_plan(plan_spec(name)).items()
                   if isinstance(choice, (BtfTracepoint, Tracepoint))}
        tracepoints = {p.role for p in loaded.programs if p.method == "tracepoint"}
        assert tracepoints == planned
        if kernel.btf_available():
            # The preferred kind passes the verifier too: plain loads at BTF offsets.
            assert {p.role for p in loaded.programs if p.method == "tp_btf"} == planned
    finally:
        loaded.close()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_kprobe_fallback_passes_the_verifier(name: str) -> None:
    # This kernel refuses to attach kprobes, so the fallback is loaded
    # (compiled, verified, given a program fd) but not attached.
    loaded = compile_and_load(name, kinds=("kprobe",))
    try:
        targets = sorted(p.target for p in loaded.programs)
        assert targets == ["kprobe:tcp_cleanup_rbuf", "kprobe:tcp_retransmit_skb", "kprobe:tcp_sendmsg",
                           "kprobe:tcp_v4_destroy_sock", "kretprobe:tcp_sendmsg"]
        assert all(p.prog_id > 0 and not p.attached for p in loaded.programs)
    finally:
        loaded.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counter_slots_capacity_quarantine_and_zeroing() -> None:
    import struct

    from crusoe_metrics_exporter.plugins._tcptrace.tracer import TcpTracer

    loaded = compile_and_load("objstore")
    clock = Clock()
    try:
        tracer = TcpTracer(loaded, 64, clock=clock)
        generation = loaded.map("tt_generation")

        def gen() -> int:
            raw = generation.lookup(struct.pack("<I", 0))
            assert raw is not None
            return int(struct.unpack("<Q", raw)[0])

        addresses = [f"10.9.0.{i}" for i in range(1, 66)]
        result = tracer.set_targets(addresses, [443])
        assert len(result.watched) == 64 and result.dropped == ("10.9.0.65",)
        assert gen() == 1
        slots = {k: struct.unpack("<I", v)[0] for k, v in loaded.map("targets").items()}
        assert sorted(slots.values()) == list(range(1, 65))

        # Dirty the slot of the address about to go, then replace it by another.
        gone = "10.9.0.1"
        gone_slot = tracer._slot_of[gone]
        counters = loaded.map("counters")
        counters.update(struct.pack("<I", gone_slot), b"\x07" * counters.value_size)
        keep = [a for a in addresses[:64] if a != gone]
        result = tracer.set_targets([*keep, "10.9.1.1"], [443])
        # The freed slot is quarantined: a program may still hold a verdict naming it.
        assert result.removed == (gone,) and result.dropped == ("10.9.1.1",)
        clock.now += 2
        result = tracer.set_targets([*keep, "10.9.1.1"], [443])
        assert result.dropped == () and tracer._slot_of["10.9.1.1"] == gone_slot
        assert counters.lookup(struct.pack("<I", gone_slot)) == bytes(counters.value_size)
        assert gen() == 3
        assert len(tracer.read_stats()) == 64
    finally:
        loaded.close()
