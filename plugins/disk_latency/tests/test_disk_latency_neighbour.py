"""disk_latency next to another tool's busy BPF programs on the same tracepoints.

The neighbour is what Cilium, Falco or a second exporter amount to: perf-event
tracepoint programs on block_rq_issue/block_rq_complete, here made slow
(~45 us per event). Completions are sent back to the submitting CPU by
interrupt (rq_affinity 2) and fio submits from CPU 0 only, so completions
arrive while CPU 0 is inside the neighbour: the nesting a busy host produces
by chance, produced on purpose. The kernel then skips every perf-event BPF
program for the nested event (one at a time per CPU); raw tracepoints only
skip a program nested in itself.

References in the same run: /proc/diskstats for the loop device, and a
control: the smallest tp_btf program counting the device's completions.

Measured on the development host (6.18): now and then (about one run in
four here) every BPF program on the tracepoint - tp_btf, raw and perf-event
alike, the control included - misses the same few completions (1-33 of
6144) that /proc/diskstats and ftrace count, and no miss counter reports
them. It is reproduced by attaching and detaching a perf-event program on
block_rq_complete in a loop, which other tests on this shared machine do
(docs/ebpf.md, Limits). The tests therefore hold the plugin to the control
exactly and to diskstats within that margin.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.contract import HistogramValue, Sample
from crusoe_metrics_exporter.ebpf import BpfSpec, LoadedBpf, ProgramSpec, Tracepoint, load
from crusoe_metrics_exporter.plugins.disk_latency import collector
from crusoe_metrics_exporter.settings import Overrides

pytestmark = pytest.mark.ebpf

READS, WRITES = 0, 4
IOS = 6144  # fio below: 24 MiB in 4 KiB requests

NEIGHBOUR = BpfSpec(
    "busy_neighbour",
    r"""
static __always_inline int spin(void)
{
    u64 acc = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < 1000; i++)
        acc += bpf_ktime_get_ns();
    return acc == 1;
}
int neighbour_issue(void *ctx) { return spin(); }
int neighbour_complete(void *ctx) { return spin(); }
""",
    programs=(
        ProgramSpec("issue", (Tracepoint("block", "block_rq_issue", "neighbour_issue"),)),
        ProgramSpec("complete", (Tracepoint("block", "block_rq_complete", "neighbour_complete"),)),
    ),
)

class CompletionControl(Protocol):
    """The ``completion_control`` fixture's counter (conftest.py): this device's completions it was handed."""

    def count(self) -> int: ...


#: Kernels from 6.7 on count a perf-event program's skip in its
#: recursion_misses when another BPF program runs on the CPU ("bpf: Count
#: missed stats in trace_call_bpf"); before, the loss is silent.
PERF_SKIPS_COUNTED = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2]) >= (6, 7)
#: What every BPF program may miss next to the neighbour here (see above).
KERNEL_WIDE_MARGIN = IOS // 100


@pytest.fixture
def neighbour(require_ebpf: None, state_dir: Path) -> Iterator[LoadedBpf]:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("!!! EBPF TEST SKIPPED: needs two CPUs to complete I/O on one from the other !!!")
    with load(NEIGHBOUR, state_dir) as loaded:
        yield loaded


def _completions(ex: Exporter, device: str) -> int:
    """The histogram's _count plus the untimed counter, reads and writes."""
    rec = next(r for r in ex.records if r.name == "disk_latency")
    assert rec.collector is not None, f"disk_latency is {rec.state}: {rec.reason}"
    total = 0
    for s in rec.collector.collect():
        assert isinstance(s, Sample)
        if s.labels[0] != device:
            continue
        if isinstance(s.value, HistogramValue):
            total += sum(s.value.counts)
        elif s.metric.endswith("_untimed_completions_total"):
            total += int(s.value)
    return total


def _measure(device: str, state_dir: Path, diskstats: Callable[[str], list[int]],
             completion_control: Callable[[str], CompletionControl]) -> dict[str, object]:
    """Start disk_latency (as ``collector.bpf_spec`` says), run fio next to the neighbour, compare."""
    Path(f"/sys/block/{device}/queue/rq_affinity").write_text("2\n")
    ex = Exporter.from_environment(environ={"CRUSOE_EXPORTER_STATE_DIR": str(state_dir)},
                                   overrides=Overrides({"plugins.disk_latency.device_include": f"^{device}$"}))
    ex.start(only=["disk_latency"])
    try:
        rec = next(r for r in ex.records if r.name == "disk_latency")
        plugin = rec.collector
        assert isinstance(plugin, collector.DiskLatencyCollector) and plugin.loaded is not None, rec.reason
        loaded = plugin.loaded
        control = completion_control(device)

        def read() -> tuple[int, int, int, dict[str, int]]:
            ds = diskstats(device)
            misses = {r: s.recursion_misses or 0 for r, s in loaded.stats().items()}
            return ds[READS] + ds[WRITES], control.count(), _completions(ex, device), misses

        before = read()
        subprocess.run(
            ["fio", "--name=neighbour", f"--filename=/dev/{device}", "--rw=randrw", "--bs=4k", "--direct=1",
             "--ioengine=libaio", "--iodepth=32", "--size=32M", "--io_size=24M", "--cpus_allowed=0",
             "--output=/dev/null"],
            check=True, timeout=180,
        )
        after = read()
        return {
            "diskstats": after[0] - before[0],
            "control": after[1] - before[1],
            "ours": after[2] - before[2],
            "misses": {role: after[3][role] - before[3][role] for role in after[3]},
            "method": rec.details["attach_method"],
        }
    finally:
        ex.stop()


def test_raw_tracepoints_lose_nothing_next_to_a_busy_neighbour(
    neighbour: LoadedBpf, memory_loop_device: str, state_dir: Path, diskstats: Callable[[str], list[int]],
    completion_control: Callable[[str], CompletionControl],
) -> None:
    result = _measure(memory_loop_device, state_dir, diskstats, completion_control)
    assert result["method"] == "tp_btf"
    assert result["diskstats"] == IOS, result
    # Every completion any BPF program saw, ours saw, and none was skipped.
    assert result["ours"] == result["control"], result
    assert set(result["misses"].values()) == {0}, result  # type: ignore[attr-defined]
    assert IOS - KERNEL_WIDE_MARGIN <= result["control"] <= IOS, result  # type: ignore[operator]


def test_perf_event_tracepoints_lose_events_next_to_it_and_the_kernel_says_how_many(
    neighbour: LoadedBpf, memory_loop_device: str, state_dir: Path, diskstats: Callable[[str], list[int]],
    completion_control: Callable[[str], CompletionControl], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old attach kind under the same neighbour: completions are lost, and (6.7+) counted as skipped runs."""
    every_kind = collector.bpf_spec
    monkeypatch.setattr(collector, "bpf_spec", lambda: every_kind(("tracepoint",)))
    result = _measure(memory_loop_device, state_dir, diskstats, completion_control)
    assert result["method"] == "tracepoint"
    lost = result["control"] - result["ours"]  # type: ignore[operator]
    assert lost > 0, f"the neighbour cost the perf-event programs nothing: {result}"
    misses = sum(result["misses"].values())  # type: ignore[attr-defined]
    if PERF_SKIPS_COUNTED:
        # The skipped runs count every device's events; this device's loss is among them.
        assert misses >= lost, result
    else:
        assert misses == 0, result
