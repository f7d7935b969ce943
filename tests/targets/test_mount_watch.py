"""The targets refresh thread wakes on real mount changes, not on a timer.

Mounts are made for real (tmpfs) in a private mount namespace of a child
process, so the host's table is untouched and no other process's mounts
reach the watched table; the directory watches ``/proc/<child>/mounts``.
The namespace, and every mount in it, ends with the child.
"""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.waiting import wait_until

from crusoe_metrics_exporter.targets.directory import MIN_CHANGE_GAP, TargetDirectory
from crusoe_metrics_exporter.targets.mountwatch import MountTableWatch, on_procfs
from crusoe_metrics_exporter.targets.service import TargetOptions
from crusoe_metrics_exporter.testing import options_for

pytestmark = pytest.mark.netns


@pytest.fixture
def private_ns() -> Iterator[int]:
    """The pid of a process alone in a fresh private mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("!!! NAMESPACE TEST SKIPPED: mount namespaces need root !!!")
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.fail("unshare and nsenter (util-linux) are required for this test")
    child = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "120"])
    try:
        # Ready once unshare has exec'd sleep: the namespace is made and its mounts made private
        # (until then, mounts elsewhere still propagate into it).
        assert wait_until(lambda: Path(f"/proc/{child.pid}/comm").read_text().strip() == "sleep", timeout=10)
        assert os.readlink(f"/proc/{child.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        yield child.pid
    finally:
        child.kill()
        child.wait(timeout=10)


def in_ns(pid: int, script: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-ec", script], check=True, timeout=30)


def mount_points(d: TargetDirectory) -> set[str]:
    return {line.mount_point for line in d._last_mount_lines or []}


def with_refresh(env: dict[str, str], seconds: float) -> TargetOptions:
    """Options from ``env`` with an NFS refresh timer of ``seconds`` (below the 1 s the settings accept, if need be)."""
    return dataclasses.replace(options_for(TargetOptions, None, env), nfs_mount_refresh_interval=seconds)


def watching(pid: int, directories: list[TargetDirectory], refresh: float = 3600.0, **env: str) -> TargetDirectory:
    # The NFS timer is an hour unless asked otherwise: whatever is seen sooner was seen through the notification.
    options = with_refresh(env, refresh)
    d = TargetDirectory(options, Path("/proc"), mounts_path=Path(f"/proc/{pid}/mounts"))
    directories.append(d)
    d.start()
    assert d._watch is not None and d._watch.watching
    return d


def test_procfs_mount_table_is_watchable(tmp_path: Path) -> None:
    assert on_procfs(Path("/proc/self/mounts"))
    assert not on_procfs(tmp_path)
    copy = tmp_path / "mounts"
    copy.write_text("")
    watch = MountTableWatch(copy)
    try:
        assert not watch.watching  # a plain file gives no notification: the timer re-reads it
    finally:
        watch.close()


def test_mount_and_unmount_seen_without_the_timer(private_ns: int, tmp_path: Path,
                                                  directories: list[TargetDirectory]) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    d = watching(private_ns, directories)
    reads = d.mount_table_reads
    assert str(target) not in mount_points(d)

    in_ns(private_ns, f"mount -t tmpfs -o size=1m cme-mount-watch {target}")
    assert wait_until(lambda: str(target) in mount_points(d), timeout=5.0)
    assert d.mount_table_reads > reads

    in_ns(private_ns, f"umount {target}")
    assert wait_until(lambda: str(target) not in mount_points(d), timeout=5.0)


def test_a_burst_of_mounts_is_read_once_or_twice(private_ns: int, tmp_path: Path,
                                                 directories: list[TargetDirectory]) -> None:
    d = watching(private_ns, directories)
    reads = d.mount_table_reads
    targets = [tmp_path / f"m{i}" for i in range(20)]
    for t in targets:
        t.mkdir()
    began = time.monotonic()
    in_ns(private_ns, "; ".join(f"mount -t tmpfs -o size=1m cme-burst {t}" for t in targets))
    burst = time.monotonic() - began
    assert wait_until(lambda: {str(t) for t in targets} <= mount_points(d), timeout=5.0)
    time.sleep(MIN_CHANGE_GAP + 0.5)  # past the coalescing gap: any re-read still owed has happened
    # 20 changes coalesced: one re-read per gap the burst spans, plus the last one owed (a burst takes
    # a few milliseconds, so normally 1 or 2), and no wake-up per change while a re-read is owed.
    reread = d.mount_table_reads - reads
    assert 1 <= reread <= 2 + int(burst / MIN_CHANGE_GAP)
    assert d.wakeups <= 2 * reread + 1


def changes_seen(pid: int, seconds: float) -> int:
    """The reference: mount table changes of ``pid``'s namespace over ``seconds``, from an independent poll()."""
    fd = os.open(f"/proc/{pid}/mounts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        changes, end = 0, time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            changes += len(poller.poll(int(left * 1000) + 1))
        return changes
    finally:
        os.close(fd)


def test_refresh_thread_sleeps_while_nothing_changes(private_ns: int, directories: list[TargetDirectory]) -> None:
    # Only IP literals (configured and, here, no NFS mounts): nothing for a timer to re-resolve, so a
    # 100 ms timer must not run.
    d = watching(private_ns, directories, refresh=0.1, NFS_SERVER_IPS="10.0.0.1")
    assert [s.address for s in d.nfs_servers()] == ["10.0.0.1"]
    # Even a private namespace changes when another process deletes a directory or file mounted on in
    # the host's table it was copied from (other work on the machine: `ip netns del`): the kernel
    # detaches that mount in every namespace. Each such change may cost a wake-up, nothing else may.
    changes = changes_seen(private_ns, 2.0)
    assert d.wakeups <= 2 * changes
    assert d.mount_table_reads - 1 <= changes  # besides the read at start, one per change at most
    if changes == 0:
        assert d.wakeups == 0 and d.mount_table_reads == 1


def test_host_names_keep_the_timer_for_dns(private_ns: int, directories: list[TargetDirectory]) -> None:
    names: list[str] = []

    def resolver(name: str) -> list[str]:
        names.append(name)
        return ["10.0.0.2"]

    options = with_refresh({"NFS_SERVER_IPS": "filer.test"}, 0.1)
    d = TargetDirectory(options, Path("/proc"), resolver=resolver, mounts_path=Path(f"/proc/{private_ns}/mounts"))
    directories.append(d)
    assert [s.address for s in d.nfs_servers()] == ["10.0.0.2"]
    # A name's addresses can change without any mount changing: the configured interval re-resolves it.
    assert wait_until(lambda: len(names) >= 3, timeout=5.0)
