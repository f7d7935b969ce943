"""Starting plugins in the background: one task per plugin, all in parallel, each settling once.

The HTTP server listens before any plugin starts, so ``/health`` answers at
once and ``/metrics`` serves the plugins that are ready while the others show
*starting*. Each plugin's start (support check, factory, ``start()``) runs on
a thread of its own: one that compiles for seconds, or blocks on a hung
mount, delays only itself.

A task moves its plugin from *starting* to active, unsupported or failed
exactly once (:meth:`StartTask.settle`). That is the seam for deadlines and
out-of-process plugins: anything may settle a task (a watchdog that gives up
on a start, a supervisor that saw a worker die) while the start thread is
still inside the plugin; when that thread comes back, its outcome is
discarded and a collector it built is stopped. Shutdown abandons the tasks
still running the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.host import PluginRecord, Started

log = logging.getLogger(__name__)

#: Applies a settled outcome to the record (and registers its collector);
#: called once per task, under the task's lock.
Apply = Callable[[PluginRecord, Started], None]


class StartTask:
    """The background start of one plugin."""

    def __init__(self, record: PluginRecord, run: Callable[[], Started], apply: Apply) -> None:
        self.record = record
        self._run = run
        self._apply = apply
        self._lock = threading.Lock()
        self._settled = False
        self._abandoned = False
        self.began = 0.0
        #: Seconds from launch to settling (0 until settled).
        self.duration = 0.0
        self.done = threading.Event()

    def launch(self) -> None:
        self.began = time.monotonic()
        # A daemon: a start that never returns must not keep the process alive at exit.
        threading.Thread(target=self._main, name=f"start-{self.record.name}", daemon=True).start()

    def _main(self) -> None:
        try:
            outcome = self._run()
        except BaseException as exc:  # SystemExit too: the plugin's fault, never the exporter's exit
            log.debug("plugin %s: start raised", self.record.name, exc_info=True)
            outcome = Started("failed", f"{type(exc).__name__}: {exc}")
        if not self.settle(outcome) and outcome.collector is not None:
            host.stop_collector(self.record.name, outcome.collector)

    def settle(self, outcome: Started) -> bool:
        """Make ``outcome`` the plugin's state; False when the task already settled or was abandoned."""
        with self._lock:
            if self._settled or self._abandoned:
                return False
            self._settled = True
            self.duration = time.monotonic() - self.began
            self._apply(self.record, outcome)
        self.done.set()
        return True

    def abandon(self) -> None:
        """Shutting down: an outcome that arrives from now on is discarded (and its collector stopped)."""
        with self._lock:
            self._abandoned = True
        self.done.set()

    @property
    def settled(self) -> bool:
        return self._settled


class Startup:
    """The start tasks of one exporter; ready when every one of them has settled.

    With a ``timeout``, a watchdog settles a task still running after that
    long as failed ("did not start within ..."): a plugin whose start never
    returns holds readiness for at most that long, and its collector is
    stopped if the start returns after all.
    """

    def __init__(self, tasks: Iterable[StartTask], timeout: float | None = None) -> None:
        self.tasks = list(tasks)
        self.began = time.monotonic()
        self.timeout = timeout

    def launch(self) -> None:
        for task in self.tasks:
            task.launch()
        if self.timeout is not None and self.tasks:
            threading.Thread(target=self._watch, args=(self.timeout,), name="start-watchdog", daemon=True).start()

    def _watch(self, timeout: float) -> None:
        deadline = self.began + timeout
        for task in self.tasks:
            if not task.done.wait(max(0.0, deadline - time.monotonic())) and task.settle(
                    Started("failed", f"its start did not finish within start_timeout={timeout:g}s")):
                log.warning("plugin %s: start abandoned after %gs; the exporter goes on without it",
                            task.record.name, timeout)

    def pending(self) -> list[str]:
        """Names of the plugins still starting."""
        return [t.record.name for t in self.tasks if not t.settled]

    @property
    def ready(self) -> bool:
        return all(t.settled for t in self.tasks)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every task settled (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for task in self.tasks:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not task.done.wait(remaining):
                return False
        return self.ready

    def abandon(self) -> None:
        for task in self.tasks:
            task.abandon()
