"""kernel_lockups in the QEMU guest, where writing to the kernel log is ours to do.

Synthetic records of each kind move their counter by exactly one; a real
hung task (a writer blocked on a frozen filesystem) is counted as the
kernel reports it; and the reader survives a flood of 100,000 records that
overwrites the kernel's buffer, without ever holding up a scrape.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.exporter_scrape import value
from helpers.guest import GuestExporter, start_exporter
from helpers.waiting import wait_until

from crusoe_metrics_exporter.plugins.kernel_lockups.parser import KINDS

pytestmark = pytest.mark.kernel_vm

METRIC = "crusoe_vm_kernel_soft_lockups_total"
ERRORS = "crusoe_vm_kernel_soft_lockup_collection_errors_total"

SYNTHETIC = {
    "soft_lockup": "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [synthetic:4242]",
    "hard_lockup": "watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1",
    "hung_task": "INFO: task synthetic:4242 blocked for more than 120 seconds.",
    "rcu_stall": "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
}


def write_kmsg(*lines: str) -> None:
    with open("/dev/kmsg", "w", buffering=1) as kmsg:
        for line in lines:
            kmsg.write(f"<4>{line}\n")


def counts(ex: GuestExporter) -> dict[str, float]:
    series = ex.scrape(["kernel_lockups"])
    return {kind: value(series, METRIC, kind=kind) for kind in KINDS}


@pytest.fixture(scope="module")
def exporter() -> Iterator[GuestExporter]:
    # Let user-space writes through unthrottled (the default limits each writer to 10 lines per 5 s).
    Path("/proc/sys/kernel/printk_devkmsg").write_text("on\n")
    ex = start_exporter(["kernel_lockups"])
    try:
        yield ex
    finally:
        ex.exporter.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_each_report_moves_its_counter_by_one(exporter: GuestExporter, kind: str) -> None:
    before = counts(exporter)
    write_kmsg("crusoe test: an unrelated line", SYNTHETIC[kind], "crusoe test: another unrelated line")
    assert wait_until(lambda: counts(exporter)[kind] == before[kind] + 1, timeout=10)
    time.sleep(0.5)  # nothing else may arrive late
    after = counts(exporter)
    assert after == {**before, kind: before[kind] + 1}


@contextlib.contextmanager
def frozen_filesystem() -> Iterator[Path]:
    """An ext4 filesystem on a loop device, frozen: writers to it block in D state until it thaws."""
    subprocess.run(["modprobe", "loop"], check=False)
    work = Path(tempfile.mkdtemp(prefix="cme-freeze-"))
    image, mountpoint = work / "fs.img", work / "mnt"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mountpoint)], check=True)
        try:
            subprocess.run(["fsfreeze", "-f", str(mountpoint)], check=True)
            try:
                yield mountpoint
            finally:
                subprocess.run(["fsfreeze", "-u", str(mountpoint)], check=False)
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_a_real_hung_task_is_counted(exporter: GuestExporter) -> None:
    sysctl = Path("/proc/sys/kernel/hung_task_timeout_secs")
    if not sysctl.exists():
        pytest.fail("this kernel has no hung task detector (CONFIG_DETECT_HUNG_TASK)")
    saved = sysctl.read_text()
    before = counts(exporter)
    sysctl.write_text("2\n")
    try:
        with frozen_filesystem() as mountpoint:
            writer = subprocess.Popen(["sh", "-c", f"echo x > {mountpoint}/blocked"])
            # khungtaskd looks every timeout seconds and reports a task blocked longer than that.
            counted = wait_until(lambda: counts(exporter)["hung_task"] >= before["hung_task"] + 1, timeout=30)
            dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
        writer.wait(timeout=30)  # thawed: the write completes
    finally:
        sysctl.write_text(saved)
    assert counted, "the hung writer was not counted"
    assert "blocked for more than 2 seconds" in dmesg, "the kernel's own report is what was counted"
    after = counts(exporter)
    assert after["soft_lockup"] == before["soft_lockup"] and after["rcu_stall"] == before["rcu_stall"]


def test_survives_a_flood_of_100k_records_without_holding_up_scrapes(exporter: GuestExporter) -> None:
    before = counts(exporter)
    errors_before = value(exporter.scrape(["kernel_lockups"]), ERRORS)
    collector = next(r.collector for r in exporter.exporter.records if r.name == "kernel_lockups")
    read_before = collector.records_read  # type: ignore[union-attr]
    slowest = 0.0
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        for i in range(100_000):
            os.write(fd, b"<6>crusoe test: flood record %d of 100000\n" % i)
            if i % 10_000 == 0:
                started = time.monotonic()
                series = exporter.scrape(["kernel_lockups"])
                slowest = max(slowest, time.monotonic() - started)
                # The collect finished within the scrape's deadline: it never waits for the reader.
                assert value(series, "crusoe_vm_exporter_plugin_up", plugin="kernel_lockups") == 1
    finally:
        os.close(fd)
    # The reader is still there: one more report after the flood is counted exactly once.
    write_kmsg(SYNTHETIC["soft_lockup"])
    assert wait_until(lambda: counts(exporter)["soft_lockup"] == before["soft_lockup"] + 1, timeout=60)
    assert counts(exporter) == {**before, "soft_lockup": before["soft_lockup"] + 1}
    errors = value(exporter.scrape(["kernel_lockups"]), ERRORS) - errors_before
    read = collector.records_read - read_before  # type: ignore[union-attr]
    print(f"flood: {read} records read, {errors:.0f} overruns counted; slowest scrape {slowest * 1000:.0f} ms")
    # The kernel's buffer holds a few thousand such records: either the reader
    # kept up with every one, or it lost some to an overwrite (EPIPE), counted
    # it, and went on. Nothing is lost silently.
    assert read >= 100_001 or errors >= 1
