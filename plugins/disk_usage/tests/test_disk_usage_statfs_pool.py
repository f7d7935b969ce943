"""The statfs pool's limits, with a statfs stand-in that blocks on an Event.

The real hang is tested with FUSE in test_disk_usage_hung_mount.py; here a
blocking function is used only to reach states a test cannot produce quickly
with real mounts (dozens of hung filesystems at once, the thread cap).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from crusoe_metrics_exporter.plugins.disk_usage.statfs import StatfsPool

REAL = os.statvfs("/")


class BlockingStatfs:
    def __init__(self, hang: set[bytes]) -> None:
        self.hang = hang
        self.release = threading.Event()
        self.calls: list[bytes] = []

    def __call__(self, path: bytes) -> os.statvfs_result:
        self.calls.append(path)
        if path in self.hang:
            self.release.wait()
        if path == b"/enoent":
            raise FileNotFoundError(2, "No such file or directory")
        if path == b"/weird":
            raise ValueError("embedded null byte")
        return REAL


def test_thread_cap_turns_extra_work_into_busy() -> None:
    hung = {b"/h%d" % i for i in range(6)}
    fake = BlockingStatfs(hung)
    pool = StatfsPool(timeout=0.1, workers=2, max_blocked=3, statfs=fake)
    pool.start()
    try:
        seen_threads = set()
        for _ in range(6):
            outcomes = pool.stat_all([b"/ok", *sorted(hung)])
            seen_threads.add(pool.thread_count())
            assert pool.thread_count() <= 2 + 3
        assert max(seen_threads) == 5
        assert len(pool.stuck()) == 5  # 2 workers + 3 replacements all blocked: the cap
        kinds = {k.decode(): v.kind for k, v in outcomes.items()}
        # Every thread is blocked: a healthy path cannot start and is 'busy', not 'stuck'.
        assert kinds == {"/ok": "busy", "/h0": "stuck", "/h1": "stuck", "/h2": "stuck", "/h3": "stuck",
                         "/h4": "stuck", "/h5": "busy"}
        # '/ok' ran in the first two scrapes, while a worker was free; each hung path was tried once.
        assert sorted(fake.calls) == [b"/h0", b"/h1", b"/h2", b"/h3", b"/h4", b"/ok", b"/ok"]
    finally:
        fake.release.set()
    assert _wait(lambda: not pool.stuck() and pool.thread_count() == 2)
    outcomes = pool.stat_all([*sorted(hung), b"/ok"])
    assert {v.kind for v in outcomes.values()} == {"ok"}
    pool.stop()
    assert _wait(lambda: pool.thread_count() == 0)


def test_errors_are_outcomes_not_exceptions() -> None:
    pool = StatfsPool(timeout=1, workers=1, statfs=BlockingStatfs(set()))
    pool.start()
    outcomes = pool.stat_all([b"/enoent", b"/weird", b"/ok", b"/ok"])
    assert outcomes[b"/enoent"].kind == "error" and "No such file" in outcomes[b"/enoent"].error
    assert outcomes[b"/weird"].kind == "error" and "ValueError" in outcomes[b"/weird"].error
    assert outcomes[b"/ok"].kind == "ok" and outcomes[b"/ok"].result == REAL
    assert len(outcomes) == 3
    pool.stop()


def test_concurrent_callers_share_the_pool() -> None:
    pool = StatfsPool(timeout=1, workers=2)
    pool.start()
    results: list[int] = []

    def scrape() -> None:
        results.append(len(pool.stat_all([b"/", b"/tmp", b"/proc"])))

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [3] * 8
    assert pool.thread_count() == 2
    pool.stop()


def test_not_started_pool_refuses() -> None:
    pool = StatfsPool(timeout=1)
    with pytest.raises(RuntimeError):
        pool.stat_all([b"/"])
    with pytest.raises(ValueError):
        StatfsPool(timeout=0)


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_concurrent_scrapes_blocked_on_one_path_release_cleanly() -> None:
    fake = BlockingStatfs({b"/h"})
    pool = StatfsPool(timeout=0.1, workers=2, statfs=fake)
    pool.start()
    kinds: list[str] = []
    barrier = threading.Barrier(2)

    def scrape() -> None:
        barrier.wait()
        kinds.append(pool.stat_all([b"/h"])[b"/h"].kind)

    threads = [threading.Thread(target=scrape) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(kinds) in (["stuck", "timeout"], ["timeout", "timeout"])
    fake.release.set()
    assert _wait(lambda: not pool.stuck() and pool.thread_count() == 2)
    assert pool.stat_all([b"/h"])[b"/h"].kind == "ok"
    pool.stop()
