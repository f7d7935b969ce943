"""disk_usage collector: statfs of the selected mounts of the host's PID 1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from crusoe_metrics_exporter.plugins.disk_usage import DiskUsageOptions
from crusoe_metrics_exporter.plugins.disk_usage.parser import (
    MountSelector,
    SelectedMount,
    parse_mounts,
)
from crusoe_metrics_exporter.plugins.disk_usage.statfs import (
    DEFAULT_MOUNT_TIMEOUT,
    MAX_WAIT,
    StatfsFunction,
    StatfsOutcome,
    StatfsPool,
)
from crusoe_metrics_exporter.sdk import DEFAULT_READ_LIMIT, PluginContext, Sample, Unreadable, read_limited, unreadable

ERRORS_METRIC = "disk_usage_collection_errors_total"
#: Threads allowed to stay blocked in statfs on top of the workers.
MAX_BLOCKED_THREADS = 32
#: Share of the core's collect timeout the statfs phase may use, so a hung
#: mount costs its own series only, never the whole plugin's scrape.
_SHARE_OF_COLLECT_TIMEOUT = 0.8


def mounts_path(ctx: PluginContext[DiskUsageOptions]) -> Path:
    return ctx.host_proc / "1" / "mounts"


class StatfsRoot(NamedTuple):
    """Where statfs paths start, and how that was chosen (shown as ``statfs_root`` in details)."""

    prefix: bytes
    note: str
    #: Why no root that reaches the host's filesystems is usable, and the fix; None when one is.
    problem: Unreadable | None = None


HOST_ROOT_FIX = ("mount the host's / read-only at /host/root (Kubernetes: hostPath / with mountPropagation "
                 "HostToContainer) and set HOST_ROOT_PATH=/host/root")


def resolve_statfs_root(host_proc: Path, host_root: Path | None = None) -> StatfsRoot:
    """The prefix statfs paths get: HOST_ROOT_PATH, else PID 1's root, else our own /.

    HOST_ROOT_PATH (node_exporter's --path.rootfs) is the host's / mounted
    into a container; "/" there means the host's own paths. PID 1's root is
    the host's view too, but reading that link needs ptrace-level access to
    PID 1 (CAP_SYS_PTRACE from a container or a non-root user), which a
    sandbox may deny even to root. Then, if this process demonstrably shares
    PID 1's mount table (the same mounts text), the mount points are the same
    paths here and are used as they are.
    """
    if host_root is not None:
        try:
            os.stat(host_root)
        except OSError as exc:
            why = f"{host_root} (HOST_ROOT_PATH) is not accessible: {exc.strerror or exc}"
            return StatfsRoot(os.fsencode(host_root), why, Unreadable(why, "mount the host's / there or unset it"))
        prefix = b"" if host_root == Path("/") else os.fsencode(host_root)
        return StatfsRoot(prefix, f"{host_root} (HOST_ROOT_PATH)")
    root = host_proc / "1" / "root"
    try:
        os.stat(root)
        return StatfsRoot(os.fsencode(root), f"{root} (PID 1's root)")
    except OSError as exc:
        denied = unreadable(root, exc, needs="CAP_SYS_PTRACE")
        reason = denied.reason if denied else f"{root} is not accessible: {exc.strerror or exc}"
    try:
        same = read_limited(host_proc / "1" / "mounts") == read_limited(host_proc / "self" / "mounts")
    except OSError:
        same = False
    if same:
        return StatfsRoot(b"", f"/ ({reason}; this process shares PID 1's mount table)")
    fix = f"{HOST_ROOT_FIX}; or {denied.fix}" if denied else HOST_ROOT_FIX
    return StatfsRoot(os.fsencode(root), reason, Unreadable(f"cannot reach the host's filesystems: {reason}", fix))


def effective_mount_timeout(ctx: PluginContext[DiskUsageOptions]) -> float:
    wanted = ctx.options.mount_timeout
    ceiling = ctx.collect_timeout * _SHARE_OF_COLLECT_TIMEOUT / MAX_WAIT
    if wanted > ceiling > 0:
        ctx.log.warning("mount_timeout %.1fs lowered to %.1fs to fit the collect timeout", wanted, ceiling)
        return ceiling
    return wanted if wanted > 0 else DEFAULT_MOUNT_TIMEOUT


class DiskUsageCollector:
    def __init__(self, ctx: PluginContext[DiskUsageOptions], statfs: StatfsFunction = os.statvfs,
                 read_limit: int = DEFAULT_READ_LIMIT) -> None:
        self._ctx = ctx
        self._mounts = mounts_path(ctx)
        statfs_root = resolve_statfs_root(ctx.host_proc, ctx.host_root)
        self._root, self._root_note = statfs_root.prefix, statfs_root.note
        self._root_problem = statfs_root.problem
        opts = ctx.options
        self._selector = MountSelector(opts.device_include, opts.device_exclude, opts.mount_point_exclude)
        self._pool = StatfsPool(
            timeout=effective_mount_timeout(ctx),
            workers=opts.stat_workers,
            max_blocked=MAX_BLOCKED_THREADS,
            statfs=statfs,
            name=f"{ctx.plugin}-statfs",
        )
        self._read_limit = read_limit
        self._reported_problem = ""

    @property
    def pool(self) -> StatfsPool:
        return self._pool

    def start(self) -> None:
        self._pool.start()
        self._ctx.details["mounts"] = str(self._mounts)
        self._ctx.details["statfs_root"] = self._root_note
        if self._root_problem is not None:
            self._ctx.log.warning("%s: every statfs will fail (%s)", self._root_problem.reason, self._root_problem.fix)
        self._ctx.details["mount_timeout"] = f"{self._pool.timeout:g}s"

    def stop(self) -> None:
        self._pool.stop()

    def collect(self) -> list[Sample]:
        errors = self._ctx.errors
        try:
            content = read_limited(self._mounts, self._read_limit)
        except OSError as exc:
            errors.inc(ERRORS_METRIC)
            self._report(f"cannot read {self._mounts}: {exc.strerror or exc}")
            return []
        if content.truncated:
            errors.inc(ERRORS_METRIC)
            self._report(f"{self._mounts} is larger than {self._read_limit} bytes; only its beginning was read")
        else:
            self._report("")
        parsed = parse_mounts(content.data)
        if parsed.errors:
            errors.inc(ERRORS_METRIC, parsed.errors)
        mounts = self._selector.select(parsed.entries)
        outcomes = self._pool.stat_all(self._root + m.path for m in mounts)
        samples: list[Sample] = []
        for mount in mounts:
            outcome = outcomes[self._root + mount.path]
            samples.extend(self._samples(mount, outcome))
        return samples

    def _samples(self, mount: SelectedMount, outcome: StatfsOutcome) -> list[Sample]:
        labels = (mount.device, mount.mount_point)
        stuck = Sample("disk_mount_stuck", labels, 1.0 if outcome.kind in ("timeout", "stuck") else 0.0)
        if outcome.kind != "ok" or outcome.result is None:
            # A hung mount counts once, when its call overruns; while it stays
            # stuck it is skipped and the stuck gauge carries the state.
            if outcome.kind != "stuck":
                self._ctx.errors.inc(ERRORS_METRIC)
            self._ctx.log.debug("statfs %s (%s): %s: %s", mount.mount_point, mount.device, outcome.kind,
                                outcome.error)
            return [stuck]
        st = outcome.result
        # f_frsize is the unit of f_blocks (POSIX); it equals f_bsize, the seed's
        # choice, on ext4 and xfs, and is the right one where they differ (NFS).
        unit = st.f_frsize or st.f_bsize
        return [
            # A filesystem that reports more free than total (a buggy FUSE
            # server) gets 0 used rather than a negative size.
            Sample("disk_bytes_used", labels, float(max(0, st.f_blocks - st.f_bfree) * unit)),
            Sample("disk_bytes_total", labels, float(st.f_blocks * unit)),
            Sample("disk_inodes_used", labels, float(max(0, st.f_files - st.f_ffree))),
            Sample("disk_inodes_total", labels, float(st.f_files)),
            Sample("disk_bytes_available", labels, float(st.f_bavail * unit)),
            # The host's mount table says how the host mounted it; statfs's
            # flag also reflects a read-only HOST_ROOT_PATH bind or ProtectSystem.
            Sample("disk_filesystem_readonly", labels,
                   1.0 if (mount.read_only if mount.read_only is not None else st.f_flag & os.ST_RDONLY) else 0.0),
            stuck,
        ]

    def _report(self, problem: str) -> None:
        if problem and problem != self._reported_problem:
            self._ctx.log.warning("%s", problem)
        elif not problem and self._reported_problem:
            self._ctx.log.info("%s is readable again", self._mounts)
        self._reported_problem = problem
