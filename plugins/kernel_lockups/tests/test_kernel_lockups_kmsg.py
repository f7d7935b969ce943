"""The /dev/kmsg reader on this machine's real kernel log.

Only harmless records are written to the host's log here: a unique token
that the test's own classifier counts. Lockup-shaped records and the 100k
flood (which overwrites the kernel's buffer) are written in the QEMU guest
(tests in tests/vm), never into the shared host's log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.privileges import setpriv
from helpers.server import CLI
from helpers.waiting import wait_until

from crusoe_metrics_exporter.plugins.kernel_lockups import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.kernel_lockups.collector import LockupCollector
from crusoe_metrics_exporter.plugins.kernel_lockups.reader import KmsgReader
from crusoe_metrics_exporter.testing import PluginHarness, invalid_samples

KMSG = Path("/dev/kmsg")
SPEC = crusoe_metrics_exporter_plugin()


@pytest.fixture(autouse=True)
def _need_kmsg() -> None:
    if os.geteuid() != 0 or not KMSG.exists():
        pytest.skip("!!! KMSG TEST SKIPPED: needs root and /dev/kmsg !!!")


def write_kmsg(text: str) -> None:
    # A fresh open per record: /dev/kmsg rate-limits each open file to 10
    # lines per 5 s unless kernel.printk_devkmsg=on, which is not ours to change.
    fd = os.open(KMSG, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, f"<14>crusoe-metrics-exporter test: {text}\n".encode())
    finally:
        os.close(fd)


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def reader(token: str) -> Iterator[tuple[KmsgReader, list[str]]]:
    errors: list[str] = []
    mark = token.encode()

    def classify(message: bytes) -> str | None:
        if mark not in message:
            return None
        return "odd" if message.endswith((b"1", b"3", b"5", b"7", b"9")) else "even"

    r = KmsgReader(KMSG, classify=classify, kinds=("odd", "even"), on_error=errors.append,
                   log=logging.getLogger("test.kmsg"))
    yield r, errors
    r.stop()


def test_counts_records_written_after_start_only(token: str, reader: tuple[KmsgReader, list[str]]) -> None:
    r, errors = reader
    for i in range(3):
        write_kmsg(f"{token} before {i}")  # already in the buffer: the reader starts at its end
    r.start()
    for i in range(10):
        write_kmsg(f"{token} after {i}")
    assert wait_until(lambda: sum(r.counts().values()) >= 10, timeout=10)
    time.sleep(0.2)  # nothing more may arrive
    assert r.counts() == {"odd": 5, "even": 5}
    assert errors == []


def test_stop_is_prompt_and_leaves_nothing_behind(reader: tuple[KmsgReader, list[str]]) -> None:
    r, _ = reader
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    r.start()
    assert threading.active_count() == threads + 1
    started = time.monotonic()
    r.stop()
    assert time.monotonic() - started < 1.0, "poll() is woken by the pipe, not a timeout"
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/fd")) == fds - 2, "device and wake-up pipe closed"


def test_collect_never_waits_for_the_device(token: str) -> None:
    harness = PluginHarness(SPEC)
    collector = LockupCollector(harness.context)
    collector.start()
    try:
        write_kmsg(f"{token} unrelated")
        slowest = 0.0
        for _ in range(200):
            started = time.perf_counter()
            samples = collector.collect()
            slowest = max(slowest, time.perf_counter() - started)
        assert not invalid_samples(SPEC, samples)
        assert {s.labels[0]: s.value for s in samples} == {
            "soft_lockup": 0.0, "hard_lockup": 0.0, "hung_task": 0.0, "rcu_stall": 0.0}
        assert slowest < 0.5, "a hang check: a collect only copies counts under a lock"
        assert harness.error_total() == 0
    finally:
        collector.stop()


def _support(path: Path) -> tuple[str, str]:
    harness = PluginHarness(SPEC, options={"kmsg_path": str(path)})
    harness.check_support()
    return harness.record.state, harness.record.reason


def test_support_check_reasons(tmp_path: Path) -> None:
    assert _support(KMSG) == ("active", "")
    state, reason = _support(tmp_path / "kmsg")
    assert state == "unsupported" and reason == f"{tmp_path / 'kmsg'} does not exist"
    (tmp_path / "file").write_text("6,1,1,-;BUG: soft lockup\n")
    state, reason = _support(tmp_path / "file")
    assert state == "unsupported" and "not a character device" in reason


@pytest.mark.deploy
def test_without_cap_syslog_it_says_so_and_with_it_runs() -> None:
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() != "1":
        pytest.skip("!!! DEPLOY TEST SKIPPED: kernel.dmesg_restrict=0 lets anyone read /dev/kmsg here !!!")

    def table(caps: list[str]) -> dict[str, str]:
        proc = subprocess.run([*setpriv(caps), CLI, "plugins", "--json", "--enable", "kernel_lockups"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return next(r for r in json.loads(proc.stdout) if r["name"] == "kernel_lockups")

    denied = table([])
    assert denied["state"] == "unsupported"
    assert denied["reason"] == "reading /dev/kmsg needs CAP_SYSLOG (kernel.dmesg_restrict=1 on this host)"
    assert "AmbientCapabilities=CAP_SYSLOG" in denied["fix"] and "capabilities.add: [SYSLOG]" in denied["fix"]
    assert table(["CAP_SYSLOG"])["state"] == "active"
