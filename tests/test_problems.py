"""ProblemLog: a collector's trouble is logged when it changes, not on every scrape."""

from __future__ import annotations

import logging

import pytest

from crusoe_metrics_exporter.sdk import ProblemLog


def test_logs_changes_only(caplog: pytest.LogCaptureFixture) -> None:
    problems = ProblemLog(logging.getLogger("test.problems"), "/proc/x")
    with caplog.at_level(logging.INFO, logger="test.problems"):
        for problem in ("bad line", "bad line", "bad line", "two bad lines", "", "", "bad line"):
            problems.report(problem)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "bad line"),
        ("WARNING", "two bad lines"),
        ("INFO", "/proc/x reads cleanly again"),
        ("WARNING", "bad line"),
    ]
    assert problems.current == "bad line"
