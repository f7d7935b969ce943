"""disk_latency on Debian's 6.1 kernel in the test guest: the planned attach path and the kprobe fallback.

The guest's scratch disk (virtio, /dev/vdb) sees only the I/O these tests
make, so every completion the plugin counts is checked one for one against
/proc/diskstats, and bytes against its sector counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.block_io import FSYNC_LOOP
from helpers.exporter_scrape import Series, value
from helpers.guest import (
    SCRATCH_SERIAL,
    GuestExporter,
    attachments,
    block_device_by_serial,
    diskstats,
    kernel_release,
    only_kprobes,
    run_phase,
    start_exporter,
)

from crusoe_metrics_exporter.ebpf import attach_plan, plan_details
from crusoe_metrics_exporter.plugins.disk_latency import collector

pytestmark = pytest.mark.kernel_vm

# /proc/diskstats fields after the name: reads completed, sectors read, writes completed, sectors written.
READS, READ_SECTORS, WRITES, WRITE_SECTORS = 0, 2, 4, 6


@pytest.fixture(scope="module")
def scratch() -> str:
    return block_device_by_serial(SCRATCH_SERIAL)


def _start(scratch: str) -> GuestExporter:
    return start_exporter(["disk_latency"], settings={"plugins.disk_latency.device_include": f"^{scratch}$"})


@pytest.fixture(scope="module")
def planned(scratch: str) -> Iterator[GuestExporter]:
    """disk_latency attached the way feature detection decides on this kernel."""
    ex = _start(scratch)
    try:
        yield ex
    finally:
        ex.exporter.stop()


@pytest.fixture(scope="module")
def kprobed(scratch: str) -> Iterator[GuestExporter]:
    """disk_latency forced onto its kprobe fallback (blk_mq_start_request / blk_mq_end_request)."""
    with pytest.MonkeyPatch.context() as mp:
        planned_spec = collector.bpf_spec
        mp.setattr(collector, "bpf_spec", lambda: only_kprobes(planned_spec()))
        ex = _start(scratch)
        try:
            yield ex
        finally:
            ex.exporter.stop()


def _io_reconciles_with_diskstats(ex: GuestExporter, dev: str) -> None:
    """Direct writes and reads on the scratch disk: completions (timed + untimed) and bytes equal /proc/diskstats."""
    before_ds = diskstats(dev)
    before = ex.scrape(["disk_latency"])
    run_phase("direct writes", ["dd", "if=/dev/urandom", f"of=/dev/{dev}", "bs=64k", "count=400", "oflag=direct",
                                "status=none"], timeout=120)
    run_phase("direct reads", ["dd", f"if=/dev/{dev}", "of=/dev/null", "bs=64k", "count=300", "iflag=direct",
                               "status=none"], timeout=120)
    after = ex.scrape(["disk_latency"])
    after_ds = diskstats(dev)
    for side, completed, sectors in (("write", WRITES, WRITE_SECTORS), ("read", READS, READ_SECTORS)):
        expected = after_ds[completed] - before_ds[completed]
        assert expected >= 300, f"{side}: the workload did not reach /dev/{dev} ({expected} completions)"
        counted = _count(after, side, dev) - _count(before, side, dev)
        untimed = _untimed(after, side, dev) - _untimed(before, side, dev)
        assert (counted, untimed) == (expected, 0), (
            f"{side}: plugin counted {counted} + {untimed} untimed completions, /proc/diskstats {expected}")
        nbytes = value(after, f"crusoe_vm_disk_{side}_bytes_total", device=dev) - value(
            before, f"crusoe_vm_disk_{side}_bytes_total", device=dev)
        assert nbytes == (after_ds[sectors] - before_ds[sectors]) * 512


def _count(series: Series, side: str, dev: str) -> float:
    return value(series, f"crusoe_vm_disk_{side}_latency_seconds_count", device=dev)


def _untimed(series: Series, side: str, dev: str) -> float:
    return value(series, f"crusoe_vm_disk_{side}_untimed_completions_total", device=dev)


def test_disk_latency_attaches_by_the_detected_plan_on_6_1(planned: GuestExporter) -> None:
    plan = attach_plan(collector.bpf_spec())
    details = planned.details["disk_latency"]
    for key, text in plan_details(plan).items():
        assert details.get(key) == text, f"{key}: plugin says {details.get(key)!r}, feature detection {text!r}"
    ours, kernel = attachments(planned, "disk_latency")
    assert ours == kernel, f"runtime attached {ours}, the kernel (bpftool perf/link) lists {kernel}"
    assert kernel_release().startswith("6.1."), kernel_release()
    # Debian's 6.1 has BTF: the plan is the tp_btf programs, raw tracepoint links to the kernel.
    assert details["attach_method"] == "tp_btf"
    assert kernel == {"tp_btf:block_rq_issue", "tp_btf:block_rq_requeue", "tp_btf:block_rq_complete"}


def test_disk_latency_counts_virtio_io_one_for_one_with_diskstats(planned: GuestExporter, scratch: str) -> None:
    _io_reconciles_with_diskstats(planned, scratch)


def test_disk_latency_attaches_by_kprobe_on_6_1_and_counts_like_diskstats(kprobed: GuestExporter, scratch: str) -> None:
    details = kprobed.details["disk_latency"]
    assert details["attach_method"] == "kprobe"
    ours, kernel = attachments(kprobed, "disk_latency")
    assert ours == kernel == {"kprobe:blk_mq_start_request", "kprobe:blk_mq_requeue_request",
                              "kprobe:blk_mq_end_request"}
    _io_reconciles_with_diskstats(kprobed, scratch)


def test_fsync_pre_flushes_are_untimed_writes_on_6_1(planned: GuestExporter, scratch: str) -> None:
    """Each fsync of the scratch disk: a data write (timed) and an empty pre-flush (never issued: untimed)."""
    fsyncs = 100
    before_ds = diskstats(scratch)
    before = planned.scrape(["disk_latency"])
    run_phase("fsync loop", ["python3", "-c", FSYNC_LOOP, f"/dev/{scratch}", str(fsyncs)], timeout=300)
    after = planned.scrape(["disk_latency"])
    after_ds = diskstats(scratch)
    expected = after_ds[WRITES] - before_ds[WRITES]
    counted = _count(after, "write", scratch) - _count(before, "write", scratch)
    untimed = _untimed(after, "write", scratch) - _untimed(before, "write", scratch)
    assert expected >= 2 * fsyncs, f"/proc/diskstats counted {expected} writes for {fsyncs} fsyncs"
    assert counted + untimed == expected, f"timed {counted} + untimed {untimed} != /proc/diskstats {expected}"
    assert counted >= fsyncs and untimed >= fsyncs, (counted, untimed)

