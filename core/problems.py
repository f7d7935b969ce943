"""Logging a collector's trouble once per change, not once per scrape."""

from __future__ import annotations

import logging


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
