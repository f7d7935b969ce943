"""The attach kinds on Debian's 6.1 kernel in the test guest: the checks of test_ebpf_attach_kinds, there.

6.1 differs where it matters: raw tracepoints count their skipped runs
(recursion_misses) there too, while perf-event programs' skips are never
counted before 6.7.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_ebpf_attach_kinds as host
from helpers.guest import kernel_release

pytestmark = pytest.mark.kernel_vm


def test_the_guest_runs_6_1() -> None:
    assert kernel_release().startswith("6.1."), kernel_release()


def test_every_kind_sees_every_event_and_detaching_stops_it_on_6_1(state_dir: Path) -> None:
    host.test_every_kind_sees_every_event_and_detaching_stops_it(None, state_dir)


def test_programs_attached_together_fall_back_together_on_6_1(state_dir: Path) -> None:
    host.test_programs_attached_together_fall_back_together(None, state_dir)


@pytest.mark.parametrize("kind", sorted(host.NESTED))
def test_skipped_runs_are_exported_exactly_on_6_1(kind: str, state_dir: Path) -> None:
    host.test_skipped_runs_are_exported_exactly(kind, None, state_dir)
