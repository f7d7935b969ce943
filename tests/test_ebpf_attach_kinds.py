"""The attach kinds on the real kernel: each sees every event, detaches, falls back, and reports skipped runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers.block_io import direct_writes
from helpers.exporter_scrape import ebpf_service_families
from helpers.silent_loss import silent_loss_margin

from crusoe_metrics_exporter.ebpf import (
    AttachCandidate,
    BpfSpec,
    BtfOffset,
    BtfTracepoint,
    ProgramSpec,
    RawTracepoint,
    Tracepoint,
    attach_plan,
    kernel,
    load,
)
from crusoe_metrics_exporter.ebpf.service import EbpfService

pytestmark = pytest.mark.ebpf

COUNTERS = r"""
BPF_ARRAY(counts, u64, 4);
static __always_inline void bump(u32 i)
{
    u64 *v = counts.lookup(&i);
    if (v)
        __sync_fetch_and_add(v, 1);
}
#ifdef CME_WANT_btf_writes
// tp_btf: struct request read with a plain load at the BTF offset of cmd_flags.
int btf_writes(u64 *ctx)
{
    void *rq = (void *)ctx[0];
    if ((*(u32 *)((char *)rq + RQ_CMD_FLAGS) & 0xff) == 1)
        bump(0);
    return 0;
}
#endif
#ifdef CME_WANT_raw_writes
int raw_writes(u64 *ctx)
{
    u32 flags = 0;
    bpf_probe_read_kernel(&flags, sizeof(flags), (void *)(ctx[0] + RQ_CMD_FLAGS));
    if ((flags & 0xff) == 1)
        bump(1);
    return 0;
}
#endif
#ifdef CME_WANT_tracepoint__block__block_rq_complete
TRACEPOINT_PROBE(block, block_rq_complete)
{
    if (args->rwbs[0] == 'W' || (args->rwbs[0] == 'F' && args->rwbs[1] == 'W'))
        bump(2);
    return 0;
}
#endif
"""
CMD_FLAGS = BtfOffset("RQ_CMD_FLAGS", "request", "cmd_flags")


def _kinds_spec() -> BpfSpec:
    return BpfSpec(
        "kinds_test",
        COUNTERS,
        kernel_constants=(CMD_FLAGS,),
        programs=(
            ProgramSpec("btf", (BtfTracepoint("block", "block_rq_complete", "btf_writes", needs=("RQ_CMD_FLAGS",)),)),
            ProgramSpec("raw", (RawTracepoint("block", "block_rq_complete", "raw_writes", needs=("RQ_CMD_FLAGS",)),)),
            ProgramSpec("perf", (Tracepoint("block", "block_rq_complete", "tracepoint__block__block_rq_complete"),)),
        ),
    )


def _counts(loaded: object) -> list[int]:
    counts = loaded.map("counts")  # type: ignore[attr-defined]
    return [int.from_bytes(counts.lookup(i.to_bytes(4, "little")) or bytes(8), "little") for i in range(3)]


@pytest.fixture
def require_btf(require_ebpf: None) -> None:
    if not kernel.btf_available():
        pytest.skip("!!! EBPF TEST SKIPPED: this kernel has no BTF (/sys/kernel/btf/vmlinux) !!!")


def test_every_kind_sees_every_event_and_detaching_stops_it(require_btf: None, state_dir: Path) -> None:
    with load(_kinds_spec(), state_dir) as loaded:
        assert {p.role: p.method for p in loaded.programs} == {
            "btf": "tp_btf", "raw": "raw_tracepoint", "perf": "tracepoint"
        }
        assert all(p.attached and p.prog_id > 0 for p in loaded.programs)
        assert loaded.constants["RQ_CMD_FLAGS"] >= 0
        start = _counts(loaded)
        direct_writes(200)
        btf, raw, perf = (n - m for n, m in zip(_counts(loaded), start, strict=True))
        # Other writers on this disk may add to all three alike; the raw
        # tracepoint kinds miss none the other misses. The perf-event one may
        # miss more while other tests' BPF programs run on this machine. All
        # of them may miss the kernel's silent loss (CI once saw 194 of 200).
        floor = 200 - silent_loss_margin(200)
        assert btf == raw >= floor and floor <= perf <= btf, (btf, raw, perf)

        with kernel.run_stats():
            direct_writes(10)
            assert all(s.run_cnt >= 10 for s in loaded.stats().values())
            loaded.detach()
            assert not any(p.attached for p in loaded.programs) and loaded.stats() == {}
            before = loaded.stats(include_detached=True), _counts(loaded)
            direct_writes(50)
            after = loaded.stats(include_detached=True), _counts(loaded)
        # Detached means the kernel runs none of them: counts and run counts stand still.
        assert after[1] == before[1]
        assert {r: s.run_cnt for r, s in after[0].items()} == {r: s.run_cnt for r, s in before[0].items()}
        assert set(after[0]) == {"btf", "raw", "perf"}

        loaded.reattach()
        assert all(p.attached for p in loaded.programs)
        direct_writes(30)
        again = _counts(loaded)
        assert all(n - m >= 30 - silent_loss_margin(30) for n, m in zip(again, after[1], strict=True)), (
            again, after[1])


def test_a_variant_without_its_kernel_constant_falls_back(
    require_btf: None, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = BpfSpec(
        "needs_test",
        COUNTERS,
        kernel_constants=(BtfOffset("RQ_CMD_FLAGS", "request", "no_such_member"),),
        programs=(
            ProgramSpec("complete", (
                BtfTracepoint("block", "block_rq_complete", "btf_writes", needs=("RQ_CMD_FLAGS",)),
                Tracepoint("block", "block_rq_complete", "tracepoint__block__block_rq_complete"),
            )),
        ),
    )
    caplog.set_level(logging.INFO, logger="crusoe_metrics_exporter.ebpf.runtime")
    with load(spec, state_dir) as loaded:
        [program] = loaded.programs
        assert program.method == "tracepoint" and program.attached
        assert "RQ_CMD_FLAGS" not in loaded.constants
    assert "no member no_such_member" in caplog.text


def test_programs_attached_together_fall_back_together(require_btf: None, state_dir: Path) -> None:
    # The first program's tp_btf variant cannot be built: both must use the
    # perf-event tracepoint, never one of each.
    spec = BpfSpec(
        "together_test",
        COUNTERS + "int perf_other(void *ctx) { return 0; }\nint btf_other(u64 *ctx) { return 0; }\n",
        kernel_constants=(BtfOffset("RQ_CMD_FLAGS", "request", "no_such_member"),),
        attach_together=True,
        programs=(
            ProgramSpec("complete", (
                BtfTracepoint("block", "block_rq_complete", "btf_writes", needs=("RQ_CMD_FLAGS",)),
                Tracepoint("block", "block_rq_complete", "tracepoint__block__block_rq_complete"),
            )),
            ProgramSpec("issue", (
                BtfTracepoint("block", "block_rq_issue", "btf_other"),
                Tracepoint("block", "block_rq_issue", "perf_other"),
            )),
        ),
    )
    with load(spec, state_dir) as loaded:
        assert {p.role: p.method for p in loaded.programs} == {"complete": "tracepoint", "issue": "tracepoint"}


# A program that makes its own tracepoint fire while it runs: every run of
# `nested` is followed by one nested event the kernel refuses to run it for.
# `trigger` starts each round from getppid() of the test process.
RECURSION = r"""
#ifdef CME_WANT_trigger
int trigger(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TEST_TGID)
        return 0;
    bpf_trace_printk("cme test trigger\n");
    return 0;
}
#endif
int nested_btf(u64 *ctx) { bpf_trace_printk("cme test nested\n"); return 0; }
int nested_raw(u64 *ctx) { bpf_trace_printk("cme test nested\n"); return 0; }
#ifdef CME_WANT_tracepoint__bpf_trace__bpf_trace_printk
TRACEPOINT_PROBE(bpf_trace, bpf_trace_printk) { bpf_trace_printk("cme test nested\n"); return 0; }
#endif
"""

NESTED: dict[str, AttachCandidate] = {
    "tp_btf": BtfTracepoint("bpf_trace", "bpf_trace_printk", "nested_btf"),
    "raw_tracepoint": RawTracepoint("bpf_trace", "bpf_trace_printk", "nested_raw"),
    "tracepoint": Tracepoint("bpf_trace", "bpf_trace_printk", "tracepoint__bpf_trace__bpf_trace_printk"),
}


@pytest.mark.parametrize("kind", sorted(NESTED))
def test_skipped_runs_are_exported_exactly(kind: str, require_btf: None, state_dir: Path) -> None:
    rounds = 25
    spec = BpfSpec(
        "recursion_test",
        RECURSION,
        cflags=(f"-DTEST_TGID={os.getpid()}",),
        programs=(
            ProgramSpec("trigger", (Tracepoint("syscalls", "sys_enter_getppid", "trigger"),)),
            ProgramSpec("nested", (NESTED[kind],)),
        ),
    )
    service = EbpfService(state_dir=state_dir)
    try:
        loaded = service.load("recursion_test", spec)
        assert {p.role: p.method for p in loaded.programs}["nested"] == kind
        with kernel.run_stats():
            before = loaded.stats()["nested"]
            for _ in range(rounds):
                os.getppid()
            after = loaded.stats()["nested"]
        runs = after.run_cnt - before.run_cnt
        assert before.recursion_misses is not None and after.recursion_misses is not None
        misses = after.recursion_misses - before.recursion_misses
        if kind == "tracepoint":
            # A perf-event tracepoint fired inside another perf-event program
            # (`trigger`) of the same context is dropped by perf itself before
            # BPF sees it: the program never runs and nothing counts the loss.
            # (Nested from an interrupt, the kernel does count it, from 6.7
            # on: see disk_latency's neighbour test.)
            assert runs == 0 and misses == 0
        else:
            # Raw tracepoints run inside the trigger; only their own nested
            # event is refused, and counted.
            assert runs == rounds and misses == rounds
        families = ebpf_service_families(service)
        [sample] = [s for s in families["crusoe_vm_exporter_ebpf_program_recursion_misses"].samples
                    if s.labels["program"] == "nested"]
        assert sample.name.endswith("_total") and sample.value == after.recursion_misses
    finally:
        service.stop()


def test_without_btf_only_the_kinds_that_need_none_are_planned_and_loaded(
    require_ebpf: None, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel without BTF (simulated in the exporter process): no tp_btf, nothing that needs BTF offsets."""
    monkeypatch.setattr(kernel, "btf_available", lambda: False)
    spec = BpfSpec(
        "no_btf_test",
        COUNTERS,
        kernel_constants=(CMD_FLAGS,),
        programs=(
            ProgramSpec("complete", (
                BtfTracepoint("block", "block_rq_complete", "btf_writes", needs=("RQ_CMD_FLAGS",)),
                RawTracepoint("block", "block_rq_complete", "raw_writes", needs=("RQ_CMD_FLAGS",)),
                Tracepoint("block", "block_rq_complete", "tracepoint__block__block_rq_complete"),
            )),
        ),
    )
    plan = attach_plan(spec)
    assert isinstance(plan["complete"], Tracepoint), plan
    with load(spec, state_dir) as loaded:
        assert [(p.role, p.method) for p in loaded.programs] == [("complete", "tracepoint")]
