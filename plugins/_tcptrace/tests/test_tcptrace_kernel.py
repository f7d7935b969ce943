"""The compiled programs on this kernel: struct sizes as Python expects, kprobe fallback verifies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.exporter_scrape import ebpf_unavailable

from crusoe_metrics_exporter.plugins._tcptrace import bccloader, btf, program
from crusoe_metrics_exporter.plugins._tcptrace.addresses import ADDR_KEY_SIZE
from crusoe_metrics_exporter.plugins.nfs_latency import collector as nfs_collector
from crusoe_metrics_exporter.plugins.nfs_latency import parser as nfs_parser
from crusoe_metrics_exporter.plugins.objstore import collector as obj_collector
from crusoe_metrics_exporter.plugins.objstore import parser as obj_parser

pytestmark = pytest.mark.ebpf

REASON = ebpf_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING eBPF program checks: {REASON} !!!", allow_module_level=True)

ALL_ROLES = [h.role for h in program.HOOKS]

PROGRAMS: dict[str, tuple[Callable[[], str], tuple[float, ...], dict[str, int]]] = {
    "nfs_latency": (
        nfs_collector.SOURCE.read_text,
        nfs_parser.BUCKETS,
        {"NFS_MAX_INFLIGHT": 1024, "NFS_MAX_STATS": 128, "NFS_CLAMP_NS": 60 * 10**9, "NFS_BUCKETS": nfs_parser.SLOTS},
    ),
    "objstore": (
        obj_collector.SOURCE.read_text,
        obj_parser.BUCKETS,
        {"OBJ_MAX_INFLIGHT": 1024, "OBJ_MAX_STATS": 128, "OBJ_CLAMP_NS": 600 * 10**9, "OBJ_BUCKETS": obj_parser.SLOTS},
    ),
}


def compile_and_load(name: str, tracepoints: list[str], kprobes: list[str]) -> bccloader.LoadedTcpProgram:
    read, bounds, defines = PROGRAMS[name]
    offsets, _ = btf.sock_common_offsets()
    cflags = program.build_cflags({**defines, "TT_MAX_TARGETS": 64}, btf.offset_cflags(offsets), tracepoints, kprobes)
    return bccloader.load(program.build_source(read(), bounds), cflags, tracepoints, kprobes, attach=False)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_map_layouts_match_python(name: str) -> None:
    loaded = compile_and_load(name, ALL_ROLES, [])
    try:
        assert loaded.map_sizes("targets")[:2] == (ADDR_KEY_SIZE, 1)
        assert loaded.map_sizes("port_bits") == (4, 8, 1024)
        assert loaded.map_sizes("targets")[2] == 64
        if name == "nfs_latency":
            assert loaded.map_sizes("stats")[:2] == (nfs_parser.STATS_KEY_SIZE, nfs_parser.STATS_VALUE.size)
            assert loaded.map_sizes("inflight")[:2] == (8, nfs_parser.INFLIGHT_VALUE_SIZE)
        else:
            assert loaded.map_sizes("stats")[:2] == (obj_parser.STATS_KEY_SIZE, obj_parser.STATS_VALUE.size)
            assert loaded.map_sizes("phases")[:2] == (8, obj_parser.PHASE_VALUE_SIZE)
        assert all(s.method == "tracepoint" for s in loaded.statuses)
    finally:
        loaded.close()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_kprobe_fallback_passes_the_verifier(name: str) -> None:
    # This kernel refuses to attach kprobes, so the fallback is loaded
    # (compiled, verified, given a program fd) but not attached.
    loaded = compile_and_load(name, [], ALL_ROLES)
    try:
        targets = sorted(s.target for s in loaded.statuses)
        assert targets == ["kprobe:tcp_cleanup_rbuf", "kprobe:tcp_retransmit_skb", "kprobe:tcp_sendmsg",
                           "kprobe:tcp_set_state", "kretprobe:tcp_sendmsg"]
        assert not any(s.attached for s in loaded.statuses)
    finally:
        loaded.close()
