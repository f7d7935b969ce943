"""ProblemLog: a collector's trouble is logged when it changes, not on every scrape."""

from __future__ import annotations

import logging

import pytest

from crusoe_metrics_exporter.sdk import LogBudget, ProblemLog


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


def test_log_budget_caps_lines_per_interval_and_summarises_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    budget = LogBudget(logging.getLogger("test.budget"), "probes: endpoints changing state", burst=3, interval=60.0,
                       clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.budget"):
        for i in range(10_000):  # 10,000 servers failing in one round
            budget.warning("probe of %s failed", f"10.0.{i // 256}.{i % 256}")
        now[0] += 30
        budget.flush()  # interval not over: nothing yet
        now[0] += 31
        budget.flush()
        budget.info("probe of 10.0.0.1 succeeds again")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "probe of 10.0.0.0 failed",
        "probe of 10.0.0.1 failed",
        "probe of 10.0.0.2 failed",
        "probes: endpoints changing state: 9997 more like the above in the last 60s (not logged one by one)",
        "probe of 10.0.0.1 succeeds again",
    ]
