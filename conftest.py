"""Suite-wide rules that apply to core and plugin tests alike."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pluggy
import pytest

# Fixtures of the guest suite (NFS server and mounts, exporters on them); only kernel_vm tests use them.
pytest_plugins = ("helpers.guest_fixtures",)

# Tests that exercise the real kernel or real networks. On a developer laptop
# they may skip (not root, no bcc); in CI a skip would hide a broken feature,
# so there it counts as a failure.
MUST_RUN_IN_CI = ("ebpf", "netns", "deploy", "kernel_vm", "cgroup")

#: Set by the guest's boot script (tests/vm/guest_boot.py): we are inside the test guest.
IN_GUEST = os.environ.get("CME_TEST_GUEST") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """kernel_vm tests run only inside the test guest (``make test-vm``); elsewhere they skip and say how."""
    if IN_GUEST:
        return
    skip = pytest.mark.skip(reason="!!! GUEST TEST SKIPPED: runs only inside the test guest: make test-vm !!!")
    for item in items:
        if item.get_closest_marker("kernel_vm"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    marks = [m for m in MUST_RUN_IN_CI if item.get_closest_marker(m)]
    if marks:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"{item.nodeid}: marked {', '.join(marks)} and must run in CI, but skipped: {reason}"


def ebpf_impossible_reason() -> str | None:
    """Why real eBPF cannot run here at all (then, and only then, eBPF tests skip)."""
    if os.geteuid() != 0:
        return "not running as root"
    from crusoe_metrics_exporter.ebpf.bcc_locator import BccMissing, locate

    try:
        locate()
    except BccMissing as exc:
        return str(exc)
    return None


@pytest.fixture
def require_ebpf() -> None:
    reason = ebpf_impossible_reason()
    if reason:
        pytest.skip(f"!!! EBPF TEST SKIPPED: real eBPF is impossible here: {reason} !!!")


@pytest.fixture
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The eBPF runtime's state directory; one merged header tree per session keeps the suite fast."""
    return tmp_path_factory.getbasetemp() / "ebpf-state"
