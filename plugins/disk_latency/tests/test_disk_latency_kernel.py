"""disk_latency on the real kernel: a loop device, real direct I/O, compared with /proc/diskstats."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import yaml
from helpers.block_io import fsync_loop

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.contract import HistogramValue, Sample
from crusoe_metrics_exporter.ebpf import attach_plan, kernel, plan_details, verify_only
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.histogram import cumulative_buckets
from crusoe_metrics_exporter.plugins.disk_latency.collector import HOOKS, KINDS, bpf_spec
from crusoe_metrics_exporter.plugins.disk_latency.parser import BOUNDS_SECONDS
from crusoe_metrics_exporter.settings import Overrides

pytestmark = pytest.mark.ebpf

# /proc/diskstats fields (0-based after the name): reads completed, sectors
# read, ms reading, writes completed, sectors written, ms writing.
READS, READ_SECTORS, READ_MS, WRITES, WRITE_SECTORS, WRITE_MS = 0, 2, 3, 4, 6, 7

#: diskstats times a request from its allocation, we from its issue to the
#: device, so our mean is a little lower: on this loop device the gap is
#: 1-4 us on means of 15-45 us. diskstats also truncates its total to whole
#: ms (under 2 us per request over 600+ requests). Allowed difference:
#: 15 % of the diskstats mean plus 5 us.
MEAN_TOLERANCE_RELATIVE = 0.15
MEAN_TOLERANCE_ABSOLUTE = 5e-6


@pytest.fixture
def exporter(loop_device: str, state_dir: Path) -> Iterator[Exporter]:
    ex = Exporter.from_environment(environ={"CRUSOE_EXPORTER_STATE_DIR": str(state_dir)},
                                   overrides=Overrides({"plugins.disk_latency.device_include": f"^{loop_device}$"}))
    ex.start(only=["disk_latency"])
    try:
        yield ex
    finally:
        ex.stop()


def _dd(args: list[str]) -> None:
    subprocess.run(["dd", *args, "status=none"], check=True, timeout=60)


def _plugin_samples(ex: Exporter) -> dict[tuple[str, str], float | HistogramValue]:
    rec = next(r for r in ex.records if r.name == "disk_latency")
    assert rec.collector is not None, f"disk_latency is {rec.state}: {rec.reason}"
    out: dict[tuple[str, str], float | HistogramValue] = {}
    for s in rec.collector.collect():
        assert isinstance(s, Sample)
        out[(s.metric, s.labels[0])] = s.value
    return out


def _hist(samples: dict[tuple[str, str], float | HistogramValue], metric: str, dev: str) -> HistogramValue:
    value = samples[(metric, dev)]
    assert isinstance(value, HistogramValue)
    return value


def _completions(before: dict[tuple[str, str], float | HistogramValue],
                 after: dict[tuple[str, str], float | HistogramValue], side: str, dev: str) -> tuple[int, int]:
    """(timed, untimed) completions between two readings: the histogram's _count and the untimed counter."""
    metric = f"disk_{side}_latency_seconds"
    timed = sum(_hist(after, metric, dev).counts) - sum(_hist(before, metric, dev).counts)
    key = (f"disk_{side}_untimed_completions_total", dev)
    return timed, int(float(after[key]) - float(before[key]))  # type: ignore[arg-type]


class CompletionControl(Protocol):
    """The ``completion_control`` fixture's counter (conftest.py): completions it was handed so far."""

    def count(self) -> int: ...


def _skipped_completions(ex: Exporter) -> int:
    """Runs of the completion program the kernel reports skipping so far (its recursion_misses).

    tp_btf programs are skipped only when the same program is already
    running on that CPU (a completion of this loop device in softirq nested
    in the program's run for another disk's completion); the kernel counts
    each skip, and so must every reconciliation here.
    """
    rec = next(r for r in ex.records if r.name == "disk_latency")
    loaded = getattr(rec.collector, "loaded", None)
    assert loaded is not None
    return loaded.stats()["complete"].recursion_misses or 0


def _assert_reconciles(ours: int, control: int, expected: int, skipped: int, margin: int) -> None:
    """Ours equals what the control program was handed, less reported skips; the control equals diskstats.

    The control is an independent tp_btf counter on the same tracepoint:
    a completion ours drops that the control saw is our bug, exactly. What
    no BPF program was handed at all (the kernel's silent loss, see the
    ``silent_loss_margin`` fixture) may separate the control from diskstats.
    """
    assert control - skipped <= ours <= control, (
        f"plugin saw {ours} completions, the control program {control}, kernel-reported skips {skipped}"
    )
    assert expected - margin <= control <= expected, (
        f"the control program saw {control} completions, /proc/diskstats {expected} (margin {margin})"
    )


def expected_method() -> str:
    """The attach method the plan picks on this kernel: tp_btf wherever the kernel has BTF."""
    method = plan_details(attach_plan(bpf_spec()))["attach_method"]
    if kernel.btf_available():
        assert method == "tp_btf", method
    return method


def _check_dd_workload(exporter: Exporter, loop_device: str, diskstats: Callable[[str], list[int]],
                       control: CompletionControl, margin: Callable[[int], int]) -> None:
    """600 direct 64 KiB writes and 800 reads: counts, bytes and mean latency against diskstats and the control."""
    dev = f"/dev/{loop_device}"
    before_ds = diskstats(loop_device)
    before = _plugin_samples(exporter)
    skipped_before = _skipped_completions(exporter)
    control_before = control.count()

    _dd(["if=/dev/urandom", f"of={dev}", "bs=64k", "count=600", "oflag=direct"])
    _dd([f"if={dev}", "of=/dev/null", "bs=64k", "count=800", "iflag=direct"])

    after_ds = diskstats(loop_device)
    after = _plugin_samples(exporter)
    skipped = _skipped_completions(exporter) - skipped_before
    seen = control.count() - control_before
    ours_total = expected_total = 0
    for side, completed, sectors, ms in (
        ("read", READS, READ_SECTORS, READ_MS),
        ("write", WRITES, WRITE_SECTORS, WRITE_MS),
    ):
        h0 = _hist(before, f"disk_{side}_latency_seconds", loop_device)
        h1 = _hist(after, f"disk_{side}_latency_seconds", loop_device)
        count, untimed = _completions(before, after, side, loop_device)
        expected = after_ds[completed] - before_ds[completed]
        assert expected >= 600, f"{side}: the workload did not reach the device ({expected} completions)"
        # Every request here is issued and completed whole: all of them timed.
        assert untimed == 0, f"{side}: {untimed} completions without an issue"
        ours_total += count
        expected_total += expected

        key = (f"disk_{side}_bytes_total", loop_device)
        bytes_delta = float(after[key]) - float(before[key])  # type: ignore[arg-type]
        if count == expected:
            assert bytes_delta == (after_ds[sectors] - before_ds[sectors]) * 512

        ours = (h1.sum - h0.sum) / count
        theirs = (after_ds[ms] - before_ds[ms]) / 1000 / expected
        assert theirs > 0, f"{side}: diskstats recorded no time"
        assert abs(ours - theirs) <= MEAN_TOLERANCE_RELATIVE * theirs + MEAN_TOLERANCE_ABSOLUTE, (
            f"{side}: mean latency {ours * 1e6:.1f} us vs diskstats {theirs * 1e6:.1f} us"
        )
        total = after[(f"disk_{side}_latency_seconds_total", loop_device)]
        assert total == pytest.approx(h1.sum)
    _assert_reconciles(ours_total, seen, expected_total, skipped, margin(expected_total))


def test_counts_and_mean_latency_match_diskstats(
    exporter: Exporter, loop_device: str, diskstats: Callable[[str], list[int]],
    completion_control: Callable[[str], CompletionControl], silent_loss_margin: Callable[[int], int],
) -> None:
    rec = next(r for r in exporter.records if r.name == "disk_latency")
    assert rec.state == "active", rec.reason
    assert rec.details["attach_method"] == expected_method()
    _check_dd_workload(exporter, loop_device, diskstats, completion_control(loop_device), silent_loss_margin)


def test_counts_match_diskstats_while_another_disk_is_busy(
    busy_disk: str, exporter: Exporter, loop_device: str, diskstats: Callable[[str], list[int]],
    completion_control: Callable[[str], CompletionControl], silent_loss_margin: Callable[[int], int],
) -> None:
    """The same workload while a second loop device runs 16-deep random I/O.

    Before, this failed in about one run in four: the plugin counted 599 of
    600 writes while its recursion_misses stayed 0. The missing completion
    reached no BPF program at all (the control missed the same one; ftrace
    saw it): the kernel's silent loss, now told apart from ours.
    """
    assert busy_disk != loop_device
    _check_dd_workload(exporter, loop_device, diskstats, completion_control(loop_device), silent_loss_margin)


def test_exposition_buckets_are_cumulative_and_end_in_inf(
    exporter: Exporter, loop_device: str, silent_loss_margin: Callable[[int], int],
) -> None:
    _dd(["if=/dev/zero", f"of=/dev/{loop_device}", "bs=4k", "count=300", "oflag=direct"])
    samples = _plugin_samples(exporter)
    hist = _hist(samples, "disk_write_latency_seconds", loop_device)
    buckets = cumulative_buckets(BOUNDS_SECONDS, hist)
    assert [le for le, _ in buckets][-1] == "+Inf"
    assert len(buckets) == len(BOUNDS_SECONDS) + 1
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)
    # Exact counts are the reconciliation tests' job (against diskstats and a
    # control program); this one checks the shape, so it allows the kernel's
    # silent loss like they do: a CI run once saw 298 of 300.
    assert counts[-1] == sum(hist.counts) >= 300 - silent_loss_margin(300)

    text = render(exporter.collect()).decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("crusoe_vm_disk_write_latency_seconds_bucket")]
    inf = [ln for ln in lines if 'le="+Inf"' in ln and loop_device in ln]
    count_prefix = "crusoe_vm_disk_write_latency_seconds_count"
    count_line = [ln for ln in text.splitlines() if ln.startswith(count_prefix) and loop_device in ln]
    assert inf and count_line
    assert float(inf[0].rsplit(" ", 1)[1]) == float(count_line[0].rsplit(" ", 1)[1])
    assert any('le="0.01"' in ln for ln in lines), "the seed's 10 ms bound must stay a finite bucket"
    attached = [ln for ln in text.splitlines() if ln.startswith("crusoe_vm_exporter_ebpf_program_attached{")]
    planned = {(role, choice.method) for role, choice in attach_plan(bpf_spec()).items()
               if not isinstance(choice, str)}
    shown = {(re.search(r'program="([^"]+)"', ln).group(1), re.search(r'method="([^"]+)"', ln).group(1))  # type: ignore[union-attr]
             for ln in attached}
    assert len(attached) == len(planned) == 3 and all(ln.endswith(" 1.0") for ln in attached)
    assert shown == planned and {method for _, method in shown} == {expected_method()}
    misses = [ln for ln in text.splitlines()
              if ln.startswith("crusoe_vm_exporter_ebpf_program_recursion_misses_total{")]
    assert len(misses) == 3, "every program reports the runs the kernel skipped"
    # The monitoring mixin's eBPF alerts query exactly the names served here.
    alerts = yaml.safe_load((Path(__file__).resolve().parents[3] / "deploy" / "mixin" / "alerts.yaml").read_text())
    exprs = " ".join(r["expr"] for g in alerts["groups"] for r in g["rules"] if "alert" in r)
    queried = set(re.findall(r"crusoe_vm_exporter_ebpf_[a-z0-9_]+", exprs))
    served = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if not ln.startswith("#")}
    assert "crusoe_vm_exporter_ebpf_program_recursion_misses_total" in queried
    assert queried <= served, f"alerts query eBPF series the exporter does not serve: {sorted(queried - served)}"


def test_every_variant_passes_the_verifier(require_ebpf: None, state_dir: Path) -> None:
    """All four kinds of all three programs load here (kprobes only verified: no kprobes on this kernel)."""
    loaded = verify_only(bpf_spec(), state_dir)
    try:
        loaded_kinds = {(p.role, p.method) for p in loaded.programs}
        assert all(p.prog_id > 0 and not p.attached for p in loaded.programs)
        wanted = {(role, kind) for role in HOOKS for kind in KINDS}
        if not kernel.btf_available():
            # The request-based variants read struct offsets from BTF.
            wanted = {(role, "tracepoint") for role in HOOKS}
        assert loaded_kinds == wanted
    finally:
        loaded.close()


def test_counts_match_diskstats_under_concurrent_io(
    exporter: Exporter, loop_device: str, diskstats: Callable[[str], list[int]],
    completion_control: Callable[[str], CompletionControl], silent_loss_margin: Callable[[int], int],
) -> None:
    """32 requests in flight at once (fio, installed by scripts/setup-system.sh --test)."""
    control = completion_control(loop_device)
    before_ds = diskstats(loop_device)
    before = _plugin_samples(exporter)
    skipped_before = _skipped_completions(exporter)
    control_before = control.count()
    subprocess.run(
        [
            "fio", "--name=concurrent", f"--filename=/dev/{loop_device}", "--rw=randrw", "--bs=4k", "--direct=1",
            "--ioengine=libaio", "--iodepth=32", "--size=32M", "--io_size=24M", "--output=/dev/null",
        ],
        check=True,
        timeout=120,
    )
    after_ds = diskstats(loop_device)
    after = _plugin_samples(exporter)
    skipped = _skipped_completions(exporter) - skipped_before
    seen = control.count() - control_before
    ours_total = expected_total = 0
    for side, completed in (("read", READS), ("write", WRITES)):
        count, untimed = _completions(before, after, side, loop_device)
        expected = after_ds[completed] - before_ds[completed]
        assert expected > 1000
        assert untimed == 0, f"{side}: {untimed} completions without an issue"
        ours_total += count
        expected_total += expected
    _assert_reconciles(ours_total, seen, expected_total, skipped, silent_loss_margin(expected_total))


def test_fsync_pre_flushes_are_counted_as_untimed_writes(
    exporter: Exporter, loop_device: str, diskstats: Callable[[str], list[int]],
    silent_loss_margin: Callable[[int], int],
) -> None:
    """An fsync of a block device sends a data write and an empty pre-flush write; diskstats counts both.

    The pre-flush is completed by the flush machinery without being issued
    to the device: it has no latency. Before, the plugin dropped it (1,024
    writes where diskstats had 2,047); now it is the untimed counter.
    """
    fsyncs = 300
    before_ds = diskstats(loop_device)
    before = _plugin_samples(exporter)
    skipped_before = _skipped_completions(exporter)
    fsync_loop(f"/dev/{loop_device}", fsyncs)
    after_ds = diskstats(loop_device)
    after = _plugin_samples(exporter)
    skipped = _skipped_completions(exporter) - skipped_before
    count, untimed = _completions(before, after, "write", loop_device)
    expected = after_ds[WRITES] - before_ds[WRITES]
    assert expected >= 2 * fsyncs, f"diskstats counted {expected} writes for {fsyncs} fsyncs"
    # No control here: a pre-flush write completes in several events, and
    # which of them diskstats counts is the plugin's logic under test.
    margin = silent_loss_margin(expected)
    assert expected - skipped - margin <= count + untimed <= expected, (
        f"plugin counted {count} + {untimed} untimed writes, /proc/diskstats {expected}, "
        f"kernel-reported skips {skipped}, margin for completions no BPF program sees {margin}"
    )
    assert count >= fsyncs - skipped - margin and untimed >= fsyncs - skipped - margin, (count, untimed, skipped)
    if count + untimed == expected:
        written = float(after[("disk_write_bytes_total", loop_device)]) - float(  # type: ignore[arg-type]
            before[("disk_write_bytes_total", loop_device)])  # type: ignore[arg-type]
        assert written == (after_ds[WRITE_SECTORS] - before_ds[WRITE_SECTORS]) * 512


def test_plugins_command_shows_the_attach_method(require_ebpf: None, state_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from crusoe_metrics_exporter.cli import main; main()", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CRUSOE_EXPORTER_STATE_DIR": str(state_dir)},
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("disk_latency "))
    assert " active " in line and f"attach_method={expected_method()}" in line
    assert "Traceback" not in out.stderr
