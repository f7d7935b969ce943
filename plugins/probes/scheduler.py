"""Runs probes in the background on a jittered fixed-rate schedule.

Scrapes never wait for a probe and never start one: a round only queues
work and returns; each probe writes its result when it finishes. A probe
still running from the previous round is not started again, so a target
that hangs past every timeout costs one thread, not one per round.

Probes of a round are staggered rather than fired all at once: each runs
alone for its first ``alone_for`` seconds (or until it finishes, if sooner),
and only a probe still running after that overlaps the next ones, up to
``concurrency`` at a time. Healthy endpoints answer within a few ms, so they
are probed one after another and never measure each other: sixteen probes
released together on a 2-core VM queue behind each other's system calls,
TLS handshakes and (on loopback) server work, which read as several times
the real round trip. A round of dead targets still overlaps their timeouts.

Threads exist only while there is work: a dispatcher while probes are
queued and one short-lived thread per probe, so an idle exporter holds none.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from crusoe_metrics_exporter.plugins.probes import timing
from crusoe_metrics_exporter.plugins.probes.results import INTERNAL, Outcome, ProbeKey, ProbeResult, ResultStore
from crusoe_metrics_exporter.sdk import LogBudget

log = logging.getLogger(__name__)

#: How long a probe runs alone before the next may start beside it.
ALONE_FOR = 0.05


class _WorkerPool:
    """Runs each job on a daemon thread of its own, staggered and bounded.

    Not ThreadPoolExecutor: its workers are joined at interpreter exit (a
    probe stuck in a socket call would hold up shutdown for its whole
    timeout) and they linger idle between rounds.
    """

    def __init__(self, limit: int, work: Callable[[ProbeJob], None], alone_for: float) -> None:
        self._limit = limit
        self._work = work
        self._alone_for = alone_for
        self._cond = threading.Condition()
        self._queue: collections.deque[ProbeJob] = collections.deque()
        self._running = 0
        #: The job started last while it is within its alone_for window.
        self._alone: object | None = None
        self._alone_until = 0.0
        self._dispatching = False
        self._stopped = False

    def submit(self, job: ProbeJob) -> bool:
        with self._cond:
            if self._stopped:
                return False
            self._queue.append(job)
            if self._dispatching:
                self._cond.notify_all()
                return True
            self._dispatching = True
        threading.Thread(target=self._dispatch, name="probe-dispatch", daemon=True).start()
        return True

    def shutdown(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()

    def _dispatch(self) -> None:
        # Receive timestamps stay switched on for the whole round rather than
        # being switched on and off around every probe.
        with timing.held():
            while True:
                with self._cond:
                    job = self._next_job()
                    if job is None:
                        self._dispatching = False
                        return
                    token = object()
                    self._running += 1
                    self._alone, self._alone_until = token, time.monotonic() + self._alone_for
                threading.Thread(target=self._run, args=(job, token), name="probe", daemon=True).start()

    def _next_job(self) -> ProbeJob | None:
        """Wait (holding the condition) until the next job may start; None when there is none."""
        while True:
            if self._stopped or not self._queue:
                return None
            wait: float | None = None
            if self._alone is not None:
                wait = self._alone_until - time.monotonic()
            if self._running < self._limit and (wait is None or wait <= 0):
                return self._queue.popleft()
            # Woken early when a job finishes or stop() is called.
            self._cond.wait(wait if self._running < self._limit else None)
            if self._alone is not None and time.monotonic() >= self._alone_until:
                self._alone = None

    def _run(self, job: ProbeJob, token: object) -> None:
        try:
            self._work(job)
        finally:
            with self._cond:
                self._running -= 1
                if self._alone is token:
                    self._alone = None
                self._cond.notify_all()


@dataclass(frozen=True)
class ProbeJob:
    key: ProbeKey
    run: Callable[[], Outcome]


class ProbeScheduler:
    def __init__(
        self,
        jobs: Callable[[], list[ProbeJob]],
        store: ResultStore,
        *,
        interval: float,
        jitter: float,
        concurrency: int,
        on_error: Callable[[], None],
        rng: random.Random | None = None,
        alone_for: float = ALONE_FOR,
    ) -> None:
        if interval <= 0:
            raise ValueError("probe interval must be greater than zero")
        self._jobs = jobs
        self._store = store
        #: Thousands of endpoints changing state at once (a partition) are summarised, not logged one by one.
        self._transitions = LogBudget(log, "probes: endpoints changing state", burst=20, interval=60.0)
        self.interval = interval
        # Jitter spreads many exporters' probes apart; kept below half an
        # interval so rounds stay in order and one always lands per interval.
        self.jitter = min(max(jitter, 0.0), interval / 2)
        self._on_error = on_error
        self._rng = rng or random.Random()
        self._pool = _WorkerPool(max(1, concurrency), self._execute, alone_for)
        #: Probes submitted and not finished, with when they were submitted.
        self._in_flight: dict[ProbeKey, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="probe-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        # Running probes end at their own timeout; queued ones are dropped.
        self._pool.shutdown()

    def _loop(self) -> None:
        base = time.monotonic()
        slot = 0
        while True:
            due = base + slot * self.interval + self._rng.uniform(0.0, self.jitter)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self.run_round()
            slot += 1
            # After a stall (suspended VM, overloaded host) resume at the next
            # slot instead of firing every missed round back to back.
            behind = math.floor((time.monotonic() - base) / self.interval)
            slot = max(slot, behind)

    def run_new(self) -> int:
        """Probe targets that have no result yet, now (called when discovery finds new ones)."""
        return self.run_round(only_new=True)

    def run_round(self, only_new: bool = False) -> int:
        """Submit every current probe not already running; returns how many were submitted."""
        self._transitions.flush()
        try:
            jobs = self._jobs()
        except Exception as exc:  # a broken target snapshot must not stop the schedule
            log.error("probes: building the probe list failed (%s: %s)", type(exc).__name__, exc)
            log.debug("probes: probe list failure", exc_info=True)
            self._on_error()
            return 0
        self._store.retain({job.key for job in jobs})
        submitted = 0
        for job in jobs:
            if only_new and self._store.has_result(job.key):
                continue
            with self._lock:
                since = self._in_flight.get(job.key)
                if since is not None:
                    # Still queued or running. Longer than a whole interval means
                    # it overran its timeout (or the pool is starved): our fault.
                    if not only_new and time.monotonic() - since > self.interval:
                        log.warning("probes: %s probe of %s still running after a whole interval; skipped",
                                    job.key.probe, job.key.endpoint)
                        self._on_error()
                    continue
                self._in_flight[job.key] = time.monotonic()
            if not self._pool.submit(job):  # stopping
                with self._lock:
                    self._in_flight.pop(job.key, None)
                return submitted
            submitted += 1
        if not only_new:
            self.rounds += 1
        return submitted

    def _execute(self, job: ProbeJob) -> None:
        try:
            outcome = job.run()
        except Exception as exc:  # a bug in a probe is ours to count, not the target's fault
            log.error("probes: %s probe of %s raised %s: %s", job.key.probe, job.key.endpoint,
                      type(exc).__name__, exc)
            log.debug("probes: probe failure", exc_info=True)
            self._on_error()
            outcome = Outcome.failed(INTERNAL, 0.0, detail=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._in_flight.pop(job.key, None)
        previous = self._store.record(job.key, ProbeResult(outcome, time.time()))
        _log_transition(self._transitions, job.key, outcome, previous.outcome if previous is not None else None)


def _log_transition(budget: LogBudget, key: ProbeKey, outcome: Outcome, previous: Outcome | None) -> None:
    # Log changes, not every run: a dead endpoint must not flood the log.
    host = f"[{key.endpoint}]" if ":" in key.endpoint and key.port else key.endpoint
    where = f"{key.probe} probe of {host}" + (f":{key.port}" if key.port else "")
    if not outcome.success and (previous is None or previous.success or previous.reason != outcome.reason):
        budget.warning("probes: %s failed: %s%s", where, outcome.reason,
                       f" ({outcome.detail})" if outcome.detail else "")
    elif outcome.success and previous is not None and not previous.success:
        budget.info("probes: %s succeeds again", where)
