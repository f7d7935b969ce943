"""Polling for a condition with a bound on the time, for tests of background threads."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    """True as soon as ``predicate()`` is; False if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status of a GET of ``url``; raises OSError when nothing answers (or HTTPError for an error status)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return int(resp.status)


def wait_for_ok(status: Callable[[], int], proc: subprocess.Popen[Any], timeout: float, what: str,
                log: Callable[[], str] = lambda: "", step: float = 0.1) -> None:
    """Until ``status()`` is 200 (a started server answering); AssertionError if ``proc`` exits or time runs out.

    ``status`` raising OSError (refused, or HTTPError such as 503 while plugins start) counts as not yet;
    ``what`` and the tail of ``log()`` name the server in the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {log()[-2000:]}")
        try:
            if status() == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not answer 200 within {timeout} s: {log()[-2000:]}")
        time.sleep(step)
