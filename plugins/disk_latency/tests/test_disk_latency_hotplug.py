"""Disks that appear and disappear while the exporter runs (the seed deadlocked on the first)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crusoe_metrics_exporter import sdk
from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.contract import HistogramValue, Sample
from crusoe_metrics_exporter.plugins.disk_latency import collector as collector_module
from crusoe_metrics_exporter.plugins.disk_latency.collector import OTHER_MAP, SLOTS_MAP, DiskLatencyCollector
from crusoe_metrics_exporter.plugins.disk_latency.parser import (
    DEVICE_SLOTS,
    decode_key,
    decode_value,
    dev_t,
    encode_slot_index,
)
from crusoe_metrics_exporter.settings import Overrides

pytestmark = pytest.mark.ebpf

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_MAJOR = 7
#: The device table's age limit here (5 s in production): the plugin's thread, woken by a scrape, finds new disks.
REFRESH = 0.2

#: Files opened by the thread that is collecting, while it collects (an audit hook cannot be removed: it
#: records only for the thread and the time set here).
_collecting: dict[str, Any] = {"thread": None, "opened": []}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _collecting["thread"] == threading.get_ident():
        _collecting["opened"].append(str(args[0]))


sys.addaudithook(_audit)


def collect_reading_no_file(collector: DiskLatencyCollector) -> list[Sample]:
    """One collect; it must open no file (it reads the maps and the last device table only)."""
    _collecting["opened"] = []
    _collecting["thread"] = threading.get_ident()
    try:
        samples = list(collector.collect())
    finally:
        _collecting["thread"] = None
    assert _collecting["opened"] == [], f"collect opened {_collecting['opened']}"
    return samples


@pytest.fixture
def collector(require_ebpf: None, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DiskLatencyCollector]:
    monkeypatch.setattr(collector_module, "TABLE_REFRESH_SECONDS", REFRESH)
    ex = Exporter.from_environment(environ={"CRUSOE_EXPORTER_STATE_DIR": str(state_dir)},
                                   overrides=Overrides({"plugins.disk_latency.device_include": r"^loop\d+$"}))
    ex.start(only=["disk_latency"])
    try:
        rec = next(r for r in ex.records if r.name == "disk_latency")
        assert isinstance(rec.collector, DiskLatencyCollector), rec.reason
        yield rec.collector
    finally:
        ex.stop()


def _scrape_until(collector: DiskLatencyCollector, done: Callable[[list[Sample]], bool]) -> list[Sample]:
    """Scrape every 50 ms until ``done``; the refresh thread must get there within a few refresh periods."""
    deadline = time.monotonic() + 20 * REFRESH
    while True:
        samples = collect_reading_no_file(collector)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def _free_loop_number() -> int:
    used = {int(p.name[4:]) for p in Path("/sys/block").glob("loop*") if p.name[4:].isdigit()}
    return next(n for n in range(900, 2000) if n not in used)


def test_disk_added_after_start_is_named_then_forgotten_when_removed(
    collector: DiskLatencyCollector, diskstats: Callable[[str], list[int]]
) -> None:
    number = _free_loop_number()
    name = f"loop{number}"
    control = os.open("/dev/loop-control", os.O_RDWR)
    backing = tempfile.NamedTemporaryFile(dir="/var/tmp", suffix=".img")  # noqa: SIM115 - closed below
    added = False
    try:
        backing.truncate(16 * 1024 * 1024)
        fcntl.ioctl(control, LOOP_CTL_ADD, number)
        added = True
        subprocess.run(["losetup", f"/dev/{name}", backing.name], check=True)
        subprocess.run(
            ["dd", "if=/dev/zero", f"of=/dev/{name}", "bs=4k", "count=200", "oflag=direct", "status=none"],
            check=True,
            timeout=60,
        )
        writes = diskstats(name)[4]
        # Named by the refresh thread (scrapes only read): its series appear without a scrape reading diskstats.
        found = _scrape_until(collector, lambda got: any(s.labels[0] == name for s in got))
        samples = {(s.metric, s.labels[0]): s.value for s in found}
        hist = samples[("disk_write_latency_seconds", name)]
        assert isinstance(hist, HistogramValue) and sum(hist.counts) == writes >= 200
        # The refresh gave the new disk one of its two ARRAY slots.
        assert collector.loaded is not None
        slots = collector.loaded.map(SLOTS_MAP)
        owners = [decode_value(slots.lookup(encode_slot_index(i)) or b"").owner for i in range(DEVICE_SLOTS)]
        assert dev_t(LOOP_MAJOR, number) in owners
        # Never a synthetic "vdMAJ:MIN" label: every device label is a kernel name.
        assert all(":" not in dev for _, dev in samples)

        subprocess.run(["losetup", "-d", f"/dev/{name}"], check=True)
        fcntl.ioctl(control, LOOP_CTL_REMOVE, number)
        added = False
        gone = _scrape_until(collector, lambda got: not any(s.labels[0] == name for s in got))
        assert not any(s.labels[0] == name for s in gone)
        assert collector.loaded is not None
        # A removed disk's counters must not wait for the next disk with its major:minor.
        keys = [decode_key(k) for k in collector.loaded.map(OTHER_MAP).keys()]  # noqa: SIM118 - a BPF map
        assert (LOOP_MAJOR, number) not in keys
        slots = collector.loaded.map(SLOTS_MAP)
        owners = [decode_value(slots.lookup(encode_slot_index(i)) or b"").owner for i in range(DEVICE_SLOTS)]
        assert dev_t(LOOP_MAJOR, number) not in owners
    finally:
        if added:
            subprocess.run(["losetup", "-d", f"/dev/{name}"], check=False, capture_output=True)
            with contextlib.suppress(OSError):
                fcntl.ioctl(control, LOOP_CTL_REMOVE, number)
        os.close(control)
        backing.close()


def test_nobody_scraping_nothing_rereads_the_table(collector: DiskLatencyCollector,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock-driven refresh woke an idle exporter every 5 s (its idle CPU is
    # held to node_exporter's); the re-read is asked for by scrapes instead.
    reads: list[str] = []
    real = sdk.device_names  # what the collector imported

    def counting(host_proc: Path) -> dict[tuple[int, int], str]:
        reads.append("read")
        return real(host_proc)

    monkeypatch.setattr(collector_module, "device_names", counting)
    time.sleep(10 * REFRESH)
    assert reads == [], "the device table was re-read with nobody scraping"
    _scrape_until(collector, lambda _: bool(reads))
    assert reads, "a scrape of a table older than the age limit did not wake the refresh"
