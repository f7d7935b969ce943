"""The nvme collector's glue on a fake sysfs tree, with the SMART read replaced (no NVMe on this host).

The real ioctl against a real (QEMU-emulated) controller is tested in the
guest (tests/vm); these tests cover what the glue promises: one failing or
hanging controller never hides the others, identity comes from a timer,
errors are a cumulative counter.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.waiting import wait_until

from crusoe_metrics_exporter.plugins.nvme import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.nvme.collector import NvmeCollector
from crusoe_metrics_exporter.plugins.nvme.smart import SmartLog, parse_smart_log
from crusoe_metrics_exporter.plugins.nvme.sysfs import Controller
from crusoe_metrics_exporter.testing import PluginHarness, invalid_samples

from .test_nvme_parsing import fake_sysfs, page

SPEC = crusoe_metrics_exporter_plugin()
ERRORS = "nvme_collection_errors_total"
TWO = {"nvme0": ("SN001", "DriveA", "1.0"), "nvme1": ("SN002", "DriveB", "2.0")}


class FakeDrives:
    """SMART answers per controller name: a log, an exception, or a hang until released."""

    def __init__(self) -> None:
        self.logs: dict[str, SmartLog | Exception] = {}
        self.hang: dict[str, threading.Event] = {}
        self.calls: dict[str, int] = {}

    def __call__(self, controller: Controller) -> SmartLog:
        self.calls[controller.name] = self.calls.get(controller.name, 0) + 1
        gate = self.hang.get(controller.name)
        if gate is not None:
            gate.wait(30)
        answer = self.logs[controller.name]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def drives() -> FakeDrives:
    d = FakeDrives()
    d.logs["nvme0"] = parse_smart_log(page(warning=0b100, kelvin=318, spare=87, used=13, poh=52341, media=7,
                                           errlog=3, unsafe=9))
    d.logs["nvme1"] = parse_smart_log(page(kelvin=300, spare=100, poh=10))
    return d


@pytest.fixture
def collectors() -> Iterator[list[NvmeCollector]]:
    made: list[NvmeCollector] = []
    yield made
    for c in made:
        c.stop()


def make(tmp_path: Path, drives: FakeDrives, collectors: list[NvmeCollector], **options: str):  # type: ignore[no-untyped-def]
    ctx = PluginHarness(SPEC, options={"sysfs_path": str(tmp_path), **options}).context
    collector = NvmeCollector(ctx, read_smart=drives)
    collector.start()
    collectors.append(collector)
    return collector, ctx


def series(collector: NvmeCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    samples = collector.collect()
    assert not invalid_samples(SPEC, samples)
    return {(s.metric, s.labels): float(s.value) for s in samples}  # type: ignore[arg-type]


def test_every_family_per_controller(tmp_path: Path, drives: FakeDrives, collectors: list[NvmeCollector]) -> None:
    fake_sysfs(tmp_path, TWO)
    collector, ctx = make(tmp_path, drives, collectors)
    s = series(collector)
    assert s[("nvme_info", ("nvme0", "SN001", "DriveA", "1.0"))] == 1
    assert s[("nvme_info", ("nvme1", "SN002", "DriveB", "2.0"))] == 1
    assert s[("nvme_smart_critical_warning", ("nvme0", "SN001", "reliability"))] == 1
    assert s[("nvme_smart_critical_warning", ("nvme0", "SN001", "spare_low"))] == 0
    assert s[("nvme_media_errors_total", ("nvme0", "SN001"))] == 7
    assert s[("nvme_error_log_entries_total", ("nvme0", "SN001"))] == 3
    assert s[("nvme_percentage_used", ("nvme0", "SN001"))] == 13
    assert s[("nvme_available_spare", ("nvme0", "SN001"))] == 87
    assert s[("nvme_power_on_hours", ("nvme0", "SN001"))] == 52341
    assert s[("nvme_unsafe_shutdowns_total", ("nvme0", "SN001"))] == 9
    assert s[("nvme_temperature_celsius", ("nvme0", "SN001"))] == pytest.approx(44.85)
    assert s[("nvme_power_on_hours", ("nvme1", "SN002"))] == 10
    assert len(s) == 2 * (1 + 6 + 7)
    assert ctx.errors.metric_totals()[ERRORS] == 0


def test_a_failing_controller_costs_only_its_smart_series(tmp_path: Path, drives: FakeDrives,
                                                          collectors: list[NvmeCollector]) -> None:
    fake_sysfs(tmp_path, TWO)
    drives.logs["nvme0"] = OSError(5, "Input/output error")
    collector, ctx = make(tmp_path, drives, collectors)
    for scrape in (1, 2):
        s = series(collector)
        assert ("nvme_info", ("nvme0", "SN001", "DriveA", "1.0")) in s, "identity is still shown"
        assert not any(k[1][0] == "nvme0" for k in s if k[0] != "nvme_info")
        assert s[("nvme_power_on_hours", ("nvme1", "SN002"))] == 10
        # A real cumulative counter (the Go exporter's was a per-scrape gauge).
        assert ctx.errors.metric_totals()[ERRORS] == scrape


def test_a_hanging_controller_never_holds_up_the_others(tmp_path: Path, drives: FakeDrives,
                                                        collectors: list[NvmeCollector]) -> None:
    fake_sysfs(tmp_path, TWO)
    gate = drives.hang["nvme0"] = threading.Event()
    collector, ctx = make(tmp_path, drives, collectors, smart_timeout="200ms")
    try:
        for _ in range(3):
            started = time.monotonic()
            s = series(collector)
            assert time.monotonic() - started < 1.0
            assert s[("nvme_power_on_hours", ("nvme1", "SN002"))] == 10
            assert ("nvme_power_on_hours", ("nvme0", "SN001")) not in s
        assert drives.calls["nvme0"] == 1, "a read stuck in the kernel is not started again"
        assert ctx.errors.metric_totals()[ERRORS] == 3
    finally:
        gate.set()
    time.sleep(0.1)
    assert series(collector)[("nvme_power_on_hours", ("nvme0", "SN001"))] == 52341


def test_identity_and_controllers_follow_a_timer_not_scrapes(tmp_path: Path, drives: FakeDrives,
                                                             collectors: list[NvmeCollector]) -> None:
    fake_sysfs(tmp_path, {"nvme0": ("SN000", "DriveA", "1.0")})
    collector, _ = make(tmp_path, drives, collectors, refresh_interval="1s")
    assert [k[1][0] for k in series(collector) if k[0] == "nvme_info"] == ["nvme0"]
    # Hot-plug and a firmware update: not seen by the scrape right away...
    fake_sysfs(tmp_path, {"nvme0": ("SN000", "DriveA", "1.1"), "nvme1": ("SN001", "DriveB", "2.0")})
    assert [k[1] for k in series(collector) if k[0] == "nvme_info"] == [("nvme0", "SN000", "DriveA", "1.0")]
    # ...but after the refresh timer fired.
    def infos() -> list[tuple[str, ...]]:
        return sorted(k[1] for k in series(collector) if k[0] == "nvme_info")

    assert wait_until(lambda: len(infos()) == 2, timeout=5)
    assert infos() == [("nvme0", "SN000", "DriveA", "1.1"), ("nvme1", "SN001", "DriveB", "2.0")]


def test_a_controller_that_disappears_is_rediscovered_at_once(tmp_path: Path, drives: FakeDrives,
                                                              collectors: list[NvmeCollector]) -> None:
    fake_sysfs(tmp_path, TWO)
    collector, _ = make(tmp_path, drives, collectors, refresh_interval="1h")
    shutil.rmtree(tmp_path / "class" / "nvme" / "nvme1")
    drives.logs["nvme1"] = FileNotFoundError(2, "No such file or directory")
    series(collector)  # fails for nvme1 and wakes the refresher
    assert wait_until(lambda: not any(k[1][0] == "nvme1" for k in series(collector)), timeout=5)


def test_sysfs_failure_keeps_the_known_controllers(tmp_path: Path, drives: FakeDrives,
                                                   collectors: list[NvmeCollector]) -> None:
    # The Go exporter emitted nothing at all when sysfs could not be read.
    fake_sysfs(tmp_path, TWO)
    collector, ctx = make(tmp_path, drives, collectors)
    (tmp_path / "class" / "nvme").rename(tmp_path / "gone")
    (tmp_path / "class" / "nvme").write_text("")  # listing it fails (ENOTDIR), unlike a missing directory
    collector.refresh()
    s = series(collector)
    assert s[("nvme_power_on_hours", ("nvme1", "SN002"))] == 10
    assert ctx.errors.metric_totals()[ERRORS] == 1


def test_support_check_without_controllers_or_devices(tmp_path: Path) -> None:
    def check(**options: str) -> tuple[str, str]:
        harness = PluginHarness(SPEC, options=options)
        harness.check_support()
        return harness.record.state, harness.record.reason

    assert check(sysfs_path=str(tmp_path)) == ("unsupported", f"no NVMe controllers in {tmp_path}/class/nvme")
    fake_sysfs(tmp_path, {"nvme0": ("S", "M", "F")}, {"nvme0": "1:3"})  # /dev/null's numbers
    dev = tmp_path / "dev"
    dev.mkdir()
    assert check(sysfs_path=str(tmp_path), dev_path=str(dev)) == ("unsupported", f"{dev}/nvme0 does not exist")
    (dev / "nvme0").symlink_to("/dev/null")
    state, reason = check(sysfs_path=str(tmp_path), dev_path=str(dev))
    assert state == "unsupported" and reason.startswith("nvme0: cannot read the SMART log:")
    assert "Inappropriate ioctl" in reason, "a device that is not an NVMe controller is refused by the kernel"
    (tmp_path / "class" / "nvme" / "nvme0" / "dev").write_text("241:0\n")
    state, reason = check(sysfs_path=str(tmp_path), dev_path=str(dev))
    assert state == "unsupported" and "is device 1:3, sysfs says 241:0" in reason
