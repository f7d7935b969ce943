"""Suite-wide rules that apply to core and plugin tests alike."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

# Tests that exercise the real kernel or real networks. On a developer laptop
# they may skip (not root, no bcc); in CI a skip would hide a broken feature,
# so there it counts as a failure.
MUST_RUN_IN_CI = ("ebpf", "netns")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    marks = [m for m in MUST_RUN_IN_CI if item.get_closest_marker(m)]
    if marks:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"{item.nodeid}: marked {', '.join(marks)} and must run in CI, but skipped: {reason}"
