"""ProbeScheduler on its own: timing, overruns, exceptions, shutdown."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins.probes.results import Outcome, ProbeKey, ResultStore
from crusoe_metrics_exporter.plugins.probes.scheduler import ProbeJob, ProbeScheduler


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> Outcome:
        with self.lock:
            self.n += 1
            self.times.append(time.monotonic())
        return Outcome(True, 0.001)


def make(jobs: Callable[[], list[ProbeJob]], errors: list[int], **kwargs: Any) -> tuple[ProbeScheduler, ResultStore]:
    store = ResultStore()
    options: dict[str, Any] = {"interval": 0.2, "jitter": 0.0, "concurrency": 2, **kwargs}
    scheduler = ProbeScheduler(jobs, store, on_error=lambda: errors.append(1), **options)
    return scheduler, store


def test_fixed_rate_rounds_with_bounded_jitter(wait: Callable[..., Any]) -> None:
    probe = Counter()
    key = ProbeKey("icmp", "nfs", "127.0.0.1")
    errors: list[int] = []
    scheduler, store = make(lambda: [ProbeJob(key, probe)], errors, interval=0.2, jitter=5.0,
                            rng=random.Random(7))
    assert scheduler.jitter == pytest.approx(0.1)  # capped at half the interval
    started = time.monotonic()
    scheduler.start()
    try:
        assert wait(lambda: probe.n >= 6, 3.0)
    finally:
        scheduler.stop()
    offsets = [t - started for t in probe.times[:6]]
    for slot, offset in enumerate(offsets):
        # Round k runs in [k*interval, k*interval + jitter] (plus scheduling slack).
        assert slot * 0.2 - 0.01 <= offset <= slot * 0.2 + 0.1 + 0.08, offsets
    assert store.has_result(key) and errors == []


def test_a_probe_that_raises_is_counted_and_reported_as_internal(wait: Callable[..., Any]) -> None:
    def broken() -> Outcome:
        raise RuntimeError("bug")

    key = ProbeKey("nfs_rpc", "nfs", "10.0.0.1", 2049)
    errors: list[int] = []
    scheduler, store = make(lambda: [ProbeJob(key, broken)], errors)
    assert scheduler.run_round() == 1
    assert wait(lambda: store.has_result(key), 2.0)
    scheduler.stop()
    result = store.snapshot()[0][key]
    assert (result.outcome.success, result.outcome.reason) == (False, "internal")
    assert errors == [1]


def test_overrunning_probe_is_not_started_twice() -> None:
    release = threading.Event()
    calls: list[int] = []

    def stuck() -> Outcome:
        calls.append(1)
        release.wait(5)
        return Outcome(True, 0.0)

    key = ProbeKey("icmp", "nfs", "10.0.0.1")
    errors: list[int] = []
    scheduler, _ = make(lambda: [ProbeJob(key, stuck)], errors, interval=0.1)
    try:
        assert scheduler.run_round() == 1
        assert scheduler.run_round() == 0  # still running, within its interval: quietly skipped
        assert errors == []
        time.sleep(0.15)
        assert scheduler.run_round() == 0  # running longer than an interval: an overrun
        assert errors == [1]
        assert calls == [1]
    finally:
        release.set()
        scheduler.stop()


class Overlap:
    """A probe body that records how many probes ran at the same time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self) -> Outcome:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return Outcome(True, self.seconds)


def test_concurrency_is_bounded(wait: Callable[..., Any]) -> None:
    slow = Overlap(0.2)  # far longer than alone_for: every probe overlaps the next
    keys = [ProbeKey("icmp", "nfs", f"10.0.0.{i}") for i in range(12)]
    errors: list[int] = []
    scheduler, store = make(lambda: [ProbeJob(k, slow) for k in keys], errors, concurrency=3, alone_for=0.01)
    scheduler.run_round()
    assert wait(lambda: len(store.snapshot()[0]) == 12, 5.0)
    scheduler.stop()
    assert slow.peak == 3


def test_quick_probes_run_one_after_another(wait: Callable[..., Any]) -> None:
    # Healthy endpoints answer well within alone_for: no probe of the round
    # shares the machine with another, however high the concurrency.
    quick = Overlap(0.002)
    keys = [ProbeKey("nfs_rpc", "nfs", f"10.0.0.{i}", 2049) for i in range(16)]
    errors: list[int] = []
    scheduler, store = make(lambda: [ProbeJob(k, quick) for k in keys], errors, concurrency=16, alone_for=1.0)
    started = time.monotonic()
    scheduler.run_round()
    assert wait(lambda: len(store.snapshot()[0]) == 16, 5.0)
    scheduler.stop()
    assert quick.peak == 1
    # Each started as soon as the previous finished, not after alone_for.
    assert time.monotonic() - started < 1.0


def test_a_hanging_probe_does_not_hold_up_the_round(wait: Callable[..., Any]) -> None:
    release = threading.Event()
    hung = ProbeKey("nfs_rpc", "nfs", "10.0.0.1", 2049)
    healthy = [ProbeKey("icmp", "nfs", f"10.0.0.{i}") for i in range(2, 6)]

    def job(key: ProbeKey) -> ProbeJob:
        if key == hung:
            return ProbeJob(key, lambda: (release.wait(5), Outcome(True, 0.0))[1])
        return ProbeJob(key, lambda: Outcome(True, 0.0))

    errors: list[int] = []
    scheduler, store = make(lambda: [job(k) for k in (hung, *healthy)], errors, alone_for=0.1)
    try:
        scheduler.run_round()
        # The others start once the hung probe has had its 0.1 s alone.
        assert wait(lambda: all(store.has_result(k) for k in healthy), 2.0)
        assert not store.has_result(hung)
    finally:
        release.set()
        scheduler.stop()


def test_no_probe_threads_between_rounds(wait: Callable[..., Any]) -> None:
    def probe_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("probe") and t.name != "probe-scheduler"]

    keys = [ProbeKey("icmp", "nfs", f"10.0.0.{i}") for i in range(20)]
    errors: list[int] = []
    scheduler, store = make(lambda: [ProbeJob(k, Overlap(0.05)) for k in keys], errors, concurrency=16,
                            alone_for=0.0)
    # (Threads of earlier tests' probes finish on their own.)
    assert wait(lambda: probe_threads() == [], 2.0), probe_threads()
    scheduler.run_round()
    assert wait(lambda: len(probe_threads()) > 2, 1.0)  # the round runs in parallel
    assert wait(lambda: len(store.snapshot()[0]) == 20, 5.0)
    assert wait(lambda: probe_threads() == [], 2.0), probe_threads()
    scheduler.stop()


def test_run_new_probes_only_targets_without_results(wait: Callable[..., Any]) -> None:
    old, new = ProbeKey("icmp", "nfs", "10.0.0.1"), ProbeKey("icmp", "nfs", "10.0.0.2")
    targets = [old]
    ran: list[ProbeKey] = []

    def job(key: ProbeKey) -> ProbeJob:
        def probe() -> Outcome:
            ran.append(key)
            return Outcome(True, 0.0)

        return ProbeJob(key, probe)

    errors: list[int] = []
    scheduler, store = make(lambda: [job(k) for k in targets], errors)
    scheduler.run_round()
    assert wait(lambda: store.has_result(old), 2.0)
    targets.append(new)
    assert scheduler.run_new() == 1
    assert wait(lambda: store.has_result(new), 2.0)
    targets.remove(old)
    assert scheduler.run_new() == 0
    scheduler.stop()
    assert ran == [old, new]
    assert not store.has_result(old)  # vanished target: its result is dropped


def test_stop_is_prompt_with_a_probe_stuck() -> None:
    release = threading.Event()
    key = ProbeKey("icmp", "nfs", "10.0.0.1")
    errors: list[int] = []
    scheduler, _ = make(lambda: [ProbeJob(key, lambda: (release.wait(10), Outcome(True, 0.0))[1])], errors,
                        interval=0.05)
    scheduler.start()
    time.sleep(0.1)
    started = time.monotonic()
    scheduler.stop()
    assert time.monotonic() - started < 1.0
    release.set()


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        make(list, [], interval=0.0)


def test_a_result_finishing_after_its_target_vanished_does_not_bring_its_series_back(
    wait: Callable[..., Any],
) -> None:
    key = ProbeKey("nfs_rpc", "nfs", "10.0.0.9", 2049)
    release, running, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_failure() -> Outcome:
        running.set()
        release.wait(5.0)
        finished.set()
        return Outcome.failed("timeout", 1.0)

    targets = [ProbeJob(key, slow_failure)]
    errors: list[int] = []
    scheduler, store = make(lambda: list(targets), errors)
    try:
        assert scheduler.run_round() == 1
        assert running.wait(2.0)
        targets.clear()  # discovery drops the server while its probe runs
        scheduler.run_new()
        release.set()
        assert finished.wait(2.0)
        assert wait(lambda: not scheduler._in_flight, 2.0)
        time.sleep(0.05)  # the result is recorded just after in-flight is cleared
        assert store.snapshot() == ({}, {})
    finally:
        release.set()
        scheduler.stop()


def test_ten_thousand_failing_endpoints_do_not_flood_the_log(wait: Callable[..., Any],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The trial: 10,000 NFS servers gave ~10,000 WARNING lines per probe round."""
    keys = [ProbeKey("nfs_rpc", "nfs", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 2049) for i in range(10_000)]
    errors: list[int] = []
    scheduler, store = make(lambda: [ProbeJob(k, lambda: Outcome.failed("timeout", 0.1)) for k in keys], errors,
                            interval=3600.0, concurrency=8)
    with caplog.at_level(logging.WARNING, logger="crusoe_metrics_exporter.plugins.probes.scheduler"):
        assert scheduler.run_round() == 10_000
        assert wait(lambda: len(store.snapshot()[0]) == 10_000, 60.0)
        scheduler.stop()
    failures = [r for r in caplog.records if "failed: timeout" in r.getMessage()]
    assert 1 <= len(failures) <= 20, len(failures)
    assert all(result.outcome.reason == "timeout" for result in store.snapshot()[0].values())
