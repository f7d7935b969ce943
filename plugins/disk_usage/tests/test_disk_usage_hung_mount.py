"""A filesystem whose statfs really hangs (FUSE, unanswered) must not block scrapes or leak threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.plugins.disk_usage.collector import DiskUsageCollector
from crusoe_metrics_exporter.settings import Overrides
from crusoe_metrics_exporter.testing import error_totals

ERRORS = "disk_usage_collection_errors_total"
FUSE_BYTES_TOTAL = 1000 * 4096


def _wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _by_device(samples: list[Any]) -> dict[tuple[str, str], float]:
    return {(s.metric, s.labels[0]): s.value for s in samples}


def test_hung_statfs_is_stuck_skipped_and_retried(hangable_fuse: Any, host_mounts: Any, make_ctx: Any,
                                                  tmp_path: Path) -> None:
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    mounts = (f"/dev/vda1 {hangable_fuse.mountpoint} fuse rw 0 0\n"
              f"/dev/vdb1 {healthy} ext4 rw 0 0\n").encode()
    proc = host_mounts(mounts)
    ctx = make_ctx(proc, {"mount_timeout": 0.3, "stat_workers": 2})
    collector = DiskUsageCollector(ctx)
    collector.start()
    try:
        # The filesystem answers: both mounts measured.
        first = _by_device(collector.collect())
        assert first[("disk_bytes_total", "vda1")] == FUSE_BYTES_TOTAL
        assert first[("disk_bytes_used", "vda1")] == (1000 - 400) * 4096
        assert first[("disk_bytes_available", "vda1")] == 300 * 4096
        assert first[("disk_inodes_used", "vda1")] == 50 - 20
        assert first[("disk_mount_stuck", "vda1")] == 0

        # Now it hangs: statfs(2) blocks in the kernel until the server answers.
        hangable_fuse.hold.set()
        requests_before = hangable_fuse.statfs_requests
        threads_before = threading.active_count()
        started = time.monotonic()
        hung = _by_device(collector.collect())
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 1.0, elapsed
        assert hung[("disk_mount_stuck", "vda1")] == 1
        assert ("disk_bytes_total", "vda1") not in hung
        assert hung[("disk_bytes_total", "vdb1")] == os.statvfs(healthy).f_blocks * os.statvfs(healthy).f_frsize
        assert hung[("disk_mount_stuck", "vdb1")] == 0
        assert error_totals(ctx)[ERRORS] == 1
        hung_path = os.fsencode(proc / "1" / "root") + os.fsencode(hangable_fuse.mountpoint)
        assert collector.pool.stuck().keys() == {hung_path}
        blocked_threads = threading.active_count()
        assert blocked_threads == threads_before + 1  # one replacement for the blocked worker

        # Later scrapes skip the stuck mount: fast, no new statfs, no new thread, no new error.
        for _ in range(20):
            started = time.monotonic()
            again = _by_device(collector.collect())
            assert time.monotonic() - started < 0.2
            assert again[("disk_mount_stuck", "vda1")] == 1
            assert ("disk_bytes_total", "vdb1") in again
        assert threading.active_count() == blocked_threads
        assert collector.pool.thread_count() == 3
        assert hangable_fuse.statfs_requests == requests_before + 1
        assert error_totals(ctx)[ERRORS] == 1

        # The server answers: the blocked call returns, the mount leaves the stuck set,
        # the next scrape measures it again and the extra thread is gone.
        hangable_fuse.release()
        assert _wait_until(lambda: not collector.pool.stuck())
        recovered = _by_device(collector.collect())
        assert recovered[("disk_bytes_total", "vda1")] == FUSE_BYTES_TOTAL
        assert recovered[("disk_mount_stuck", "vda1")] == 0
        assert _wait_until(lambda: collector.pool.thread_count() == 2)
        assert _wait_until(lambda: threading.active_count() == threads_before)
    finally:
        collector.stop()


def test_hung_mount_through_the_exporter(hangable_fuse: Any, host_mounts: Any) -> None:
    """End to end: the scrape finishes on time, the plugin stays up, the stuck gauge says why."""
    proc = host_mounts(f"/dev/vdz {hangable_fuse.mountpoint} fuse rw 0 0\n/dev/vda / ext4 rw 0 0\n".encode())
    exporter = Exporter.from_environment(
        environ={"HOST_PROC_PATH": str(proc)},
        overrides=Overrides({"plugins.disk_usage.mount_timeout": "200ms", "exporter.collect_timeout": "2s"}),
    )
    exporter.start(only=["disk_usage"])
    hangable_fuse.hold.set()
    try:
        for _ in range(5):
            started = time.monotonic()
            text = render(exporter.collect(only=["disk_usage"])).decode()
            assert time.monotonic() - started < 1.0
            mp = hangable_fuse.mountpoint
            assert f'crusoe_vm_disk_mount_stuck{{device="vdz",mount_point="{mp}"}} 1.0' in text
            assert 'crusoe_vm_disk_mount_stuck{device="vda",mount_point="/"} 0.0' in text
            assert 'crusoe_vm_disk_bytes_total{device="vda",mount_point="/"}' in text
            assert 'crusoe_vm_exporter_plugin_up{plugin="disk_usage"} 1.0' in text
            assert "crusoe_vm_disk_usage_collection_errors_total 1.0" in text
    finally:
        hangable_fuse.release()
        exporter.stop()
