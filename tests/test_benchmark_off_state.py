"""The eBPF benchmarks' "without" is verified to be off (issue 11, finding 6).

benchmarks/tcp_filter_bench.py once "switched programs off" with
PERF_EVENT_IOC_DISABLE, which does not stop a BPF program attached to a
tracepoint: its "with vs without" ratio compared loaded with loaded. The
benchmarks now detach, and ``ebpf_cost.detached_run`` fails when a
"detached" program still runs; ``reaches`` fails when the workload does not
reach the attached programs. Both checks are exercised here on real
programs, for every attach kind the figures are given for.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from crusoe_metrics_exporter.ebpf import LoadedBpf, kernel, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ebpf_cost import EMPTY_KINDS, detached_run, empty_spec, reaches

pytestmark = pytest.mark.ebpf

CALLS = 200
#: Every syscall, ours included; a raw tracepoint, so every attach kind has it (syscalls:* have no BTF type).
TRACEPOINTS = [("sys_enter", "raw_syscalls", "sys_enter")]


def _workload() -> float:
    for _ in range(CALLS):
        os.getppid()
    return float(CALLS)


@pytest.mark.parametrize("kind", EMPTY_KINDS)
def test_detached_means_no_runs_and_attached_means_runs(kind: str, require_ebpf: None, state_dir: Path) -> None:
    if kind == "tp_btf" and not kernel.btf_available():
        pytest.skip("!!! EBPF TEST SKIPPED: tp_btf needs kernel BTF !!!")
    with load(empty_spec(kind, TRACEPOINTS), state_dir) as loaded:
        reaches([loaded], _workload)  # raises SystemExit if the programs did not run
        assert detached_run([loaded], _workload) == CALLS
        # Reattached afterwards: the next attached round runs them again.
        reaches([loaded], _workload)


def test_an_off_that_is_not_off_fails_the_benchmark(
    require_ebpf: None, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the old benchmark did, in effect: 'off' left the programs attached. The check must refuse it."""
    with load(empty_spec("tracepoint", TRACEPOINTS), state_dir) as loaded:
        monkeypatch.setattr(LoadedBpf, "detach", lambda self: None)
        with pytest.raises(SystemExit, match="'off' was not off"):
            detached_run([loaded], _workload)
