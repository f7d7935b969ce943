"""statfs on a fixed pool of threads, with a per-mount timeout and a stuck-mount set.

statfs on a filesystem whose server is gone (NFS, FUSE, a wedged device) can
block for ever and cannot be interrupted. node_exporter learnt this the hard
way (one goroutine leaked per scrape, issue #578) and now runs statfs on a
worker pool, marks a mount point as stuck after ``mount-timeout`` and skips it
until the blocked call returns. This module does the same:

* ``stat_all`` hands the paths to ``workers`` threads and waits at most
  ``timeout`` for each call once it has started, and 1.5 x ``timeout`` for a
  call to start at all (long enough for a replacement of a worker that got
  stuck at ``timeout`` to pick it up). It never waits longer than
  2.5 x ``timeout``.
* A call that overruns marks its path stuck. The blocked thread is left to
  finish on its own, and a replacement is started so healthy mounts keep
  their workers. Stuck paths are not submitted again, so a hung mount holds at
  most one thread, never one per scrape; a hard cap bounds the total anyway.
* When the blocked call finally returns, the path leaves the stuck set and
  the next scrape tries it again; the surplus thread exits.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

log = logging.getLogger(__name__)

DEFAULT_MOUNT_TIMEOUT = 1.5
DEFAULT_STAT_WORKERS = 4
#: How long (in timeouts) a queued call may wait for a worker.
START_GRACE = 1.5
#: The longest stat_all waits, in timeouts.
MAX_WAIT = START_GRACE + 1.0

StatfsFunction = Callable[[bytes], os.statvfs_result]
Kind = Literal["ok", "error", "timeout", "stuck", "busy"]


class StatfsOutcome(NamedTuple):
    #: ok: ``result`` is set. error: statfs failed, ``error`` says why. timeout:
    #: this scrape's call overran and the path is now stuck. stuck: skipped, a
    #: call from an earlier scrape is still blocked. busy: every worker was
    #: blocked, so the call could not even start in time.
    kind: Kind
    result: os.statvfs_result | None = None
    error: str = ""


@dataclass(eq=False)
class _Job:
    path: bytes
    started: float | None = None
    done: bool = False
    #: Given up by the scrape that submitted it (stuck or never started).
    abandoned: bool = False
    #: Overran the timeout; its thread counts as blocked until it returns.
    stuck: bool = False
    result: os.statvfs_result | None = None
    error: str = ""


class StatfsPool:
    def __init__(
        self,
        timeout: float = DEFAULT_MOUNT_TIMEOUT,
        workers: int = DEFAULT_STAT_WORKERS,
        max_blocked: int = 32,
        statfs: StatfsFunction = os.statvfs,
        name: str = "statfs",
    ) -> None:
        if timeout <= 0 or workers < 1 or max_blocked < 0:
            raise ValueError("timeout must be positive, workers at least 1, max_blocked not negative")
        self.timeout = timeout
        self.workers = workers
        self.max_blocked = max_blocked
        self._statfs = statfs
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._stuck: dict[bytes, float] = {}
        self._threads = 0
        self._blocked = 0
        self._serial = 0
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            self._stopping = False
            while self._threads < self.workers:
                self._spawn()

    def stop(self) -> None:
        """Let idle workers exit; blocked ones are daemons and end with their call."""
        with self._cond:
            self._stopping = True
            for job in self._queue:
                job.abandoned = True
            self._queue.clear()
            self._cond.notify_all()

    # -- introspection -------------------------------------------------------
    def stuck(self) -> dict[bytes, float]:
        """Stuck paths and the monotonic time their blocked call started."""
        with self._cond:
            return dict(self._stuck)

    def thread_count(self) -> int:
        with self._cond:
            return self._threads

    # -- work ----------------------------------------------------------------
    def stat_all(self, paths: Iterable[bytes]) -> dict[bytes, StatfsOutcome]:
        outcomes: dict[bytes, StatfsOutcome] = {}
        pending: list[_Job] = []
        with self._cond:
            if self._stopping or self._threads == 0:
                raise RuntimeError("the statfs pool is not running")
            submitted: set[bytes] = set()
            for path in paths:
                if path in submitted:
                    continue
                submitted.add(path)
                if path in self._stuck:
                    outcomes[path] = StatfsOutcome("stuck", error="an earlier statfs is still blocked")
                    continue
                job = _Job(path)
                pending.append(job)
                self._queue.append(job)
            self._cond.notify_all()
            start_by = time.monotonic() + START_GRACE * self.timeout
            while pending:
                now = time.monotonic()
                wake = float("inf")
                still: list[_Job] = []
                for job in pending:
                    if job.done:
                        outcomes[job.path] = (
                            StatfsOutcome("ok", job.result) if job.result is not None
                            else StatfsOutcome("error", error=job.error)
                        )
                    elif job.started is None:
                        if now >= start_by:
                            job.abandoned = True
                            self._queue.remove(job)
                            outcomes[job.path] = StatfsOutcome("busy", error="no free statfs worker")
                        else:
                            wake = min(wake, start_by)
                            still.append(job)
                    elif now >= job.started + self.timeout:
                        self._declare_stuck(job)
                        outcomes[job.path] = StatfsOutcome(
                            "timeout", error=f"statfs did not return within {self.timeout:g}s")
                    else:
                        wake = min(wake, job.started + self.timeout)
                        still.append(job)
                pending = still
                if pending:
                    self._cond.wait(max(0.0, wake - now))
        return outcomes

    def _declare_stuck(self, job: _Job) -> None:
        job.abandoned = job.stuck = True
        assert job.started is not None
        self._stuck[job.path] = job.started
        self._blocked += 1
        log.warning("statfs on %s has not returned after %.1fs: marked stuck and skipped until it returns",
                    os.fsdecode(job.path), self.timeout)
        # Keep `workers` threads free for the healthy mounts, within the cap.
        if self._threads - self._blocked < self.workers and self._threads < self.workers + self.max_blocked:
            self._spawn()

    def _spawn(self) -> None:
        self._serial += 1
        self._threads += 1
        threading.Thread(target=self._work, name=f"{self._name}-{self._serial}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    self._threads -= 1
                    return
                job = self._queue.popleft()
                job.started = time.monotonic()
            try:
                result: os.statvfs_result | None = self._statfs(job.path)
                error = ""
            except OSError as exc:
                result, error = None, exc.strerror or str(exc)
            except Exception as exc:  # noqa: BLE001 - e.g. ValueError for a NUL in the path; a worker must survive
                result, error = None, f"{type(exc).__name__}: {exc}"
            with self._cond:
                job.result, job.error, job.done = result, error, True
                if job.stuck:
                    self._blocked -= 1
                    # Concurrent scrapes may each have a blocked call on one
                    # path; the path is free again when the latest returns.
                    if self._stuck.get(job.path) == job.started:
                        del self._stuck[job.path]
                        log.info("statfs on %s returned after %.1fs; it will be measured again",
                                 os.fsdecode(job.path), time.monotonic() - job.started)
                    if self._threads - self._blocked > self.workers:
                        self._threads -= 1
                        self._cond.notify_all()
                        return
                self._cond.notify_all()
