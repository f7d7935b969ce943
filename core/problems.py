"""Logging a collector's trouble once per change, not once per scrape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class ProblemLog:
    """Remembers the last problem a collector reported and logs only changes.

    A file that stays malformed would otherwise put a warning in the log on
    every scrape. ``report("")`` says all is well again; the recovery is
    logged at info once.
    """

    def __init__(self, log: logging.Logger, subject: str) -> None:
        self._log = log
        self._subject = subject
        self._last = ""

    @property
    def current(self) -> str:
        return self._last

    def report(self, problem: str) -> None:
        if problem and problem != self._last:
            self._log.warning("%s", problem)
        elif not problem and self._last:
            self._log.info("%s reads cleanly again", self._subject)
        self._last = problem


class LogBudget:
    """At most ``burst`` lines per ``interval`` for one kind of per-target trouble; the rest are counted.

    With thousands of targets (10,000 NFS servers behind a dead network),
    logging each target's failure once is still thousands of lines per round.
    Past the budget, lines are counted instead, and one summary line with
    the count goes out when the interval is over (on the next call, or on
    :meth:`flush`). The counters a plugin exports are unaffected: only the
    log is thinned.
    """

    def __init__(self, log: logging.Logger, what: str, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._what = what
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window_end = 0.0
        self._used = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        self._emit(logging.WARNING, message, args)

    def info(self, message: str, *args: object) -> None:
        self._emit(logging.INFO, message, args)

    def _emit(self, level: int, message: str, args: tuple[object, ...]) -> None:
        now = self._clock()
        with self._lock:
            summary = self._roll(now)
            allowed = self._used < self._burst
            if allowed:
                self._used += 1
            else:
                self._suppressed += 1
        if summary:
            self._log.warning("%s", summary)
        if allowed:
            self._log.log(level, message, *args)

    def flush(self) -> None:
        """Log the summary of an interval that is over, if lines were held back in it."""
        with self._lock:
            summary = self._roll(self._clock())
        if summary:
            self._log.warning("%s", summary)

    def _roll(self, now: float) -> str:
        if now < self._window_end:
            return ""
        summary = ""
        if self._suppressed:
            summary = (f"{self._what}: {self._suppressed} more like the above in the last {self._interval:g}s "
                       "(not logged one by one)")
        self._window_end = now + self._interval
        self._used = 0
        self._suppressed = 0
        return summary
