"""What the eBPF benchmarks share: empty baseline programs, per-event cost, and an "off" that is off.

* Per-event cost is the kernel's own accounting: run_time_ns / run_cnt of a
  program while BPF_ENABLE_STATS is held (scoped to the benchmark, unlike
  the kernel.bpf_stats_enabled sysctl). The time includes the accounting's
  own clock read, which is most of what an empty program costs; so every
  figure is printed next to an empty program of the same attach kind on the
  same tracepoints, measured over the same events, and next to the empty
  perf-event tracepoint program (the kind the plugins used before).
* "Without" means detached (the programs' links closed), and is checked:
  the run count of a detached program must not move while the workload
  runs, or the benchmark fails; and the same workload must move it when
  attached (checked once, outside the timed rounds: the accounting costs a
  clock read per run). Disabling the perf event does not stop a BPF program
  attached to a tracepoint; an earlier benchmark compared "loaded" with
  "loaded" that way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from crusoe_metrics_exporter.ebpf import (
    AttachCandidate,
    BpfSpec,
    BtfTracepoint,
    LoadedBpf,
    ProgramSpec,
    ProgramStats,
    RawTracepoint,
    Tracepoint,
    kernel,
)

#: Attach kinds an empty baseline is measured for, and how the figures name them.
EMPTY_KINDS = ("tp_btf", "raw_tracepoint", "tracepoint")


def empty_spec(kind: str, tracepoints: Sequence[tuple[str, str, str]]) -> BpfSpec:
    """Programs that do nothing, of one attach kind, on ``(role, category, event)`` tracepoints."""
    programs = []
    functions = []
    for role, category, event in tracepoints:
        fn = f"empty_{role}"
        functions.append(f"int {fn}(void *ctx) {{ return 0; }}")
        candidate: AttachCandidate
        if kind == "tp_btf":
            candidate = BtfTracepoint(category, event, fn)
        elif kind == "raw_tracepoint":
            candidate = RawTracepoint(category, event, fn)
        else:
            candidate = Tracepoint(category, event, fn)
        programs.append(ProgramSpec(role, (candidate,)))
    return BpfSpec(f"empty_{kind}", "\n".join(functions) + "\n", programs=tuple(programs))


@dataclass(frozen=True)
class Cost:
    """Run time and runs of some programs over one measurement."""

    ns: int
    runs: int

    @property
    def per_run(self) -> float:
        return self.ns / self.runs if self.runs else float("nan")


def delta(before: dict[str, ProgramStats], after: dict[str, ProgramStats], roles: Iterable[str]) -> dict[str, Cost]:
    return {
        role: Cost(after[role].run_time_ns - before[role].run_time_ns, after[role].run_cnt - before[role].run_cnt)
        for role in roles
    }


def per_event(costs: dict[str, Cost], roles: Iterable[str]) -> float:
    """Summed cost per event of each role (e.g. issue + complete = cost per I/O)."""
    return sum(costs[role].per_run for role in roles)


def _runs(loaded: Sequence[LoadedBpf]) -> list[int]:
    return [sum(s.run_cnt for s in obj.stats(include_detached=True).values()) for obj in loaded]


def detached_run(loaded: Sequence[LoadedBpf], workload: Callable[[], float]) -> float:
    """Run ``workload`` with ``loaded`` detached; fail loudly if any of their programs ran meanwhile."""
    with kernel.run_stats():
        for obj in loaded:
            obj.detach()
        before = _runs(loaded)
        result = workload()
        moved = [a - b for a, b in zip(_runs(loaded), before, strict=True)]
        for obj in loaded:
            obj.reattach()
    if any(moved):
        raise SystemExit(f"detached programs ran {moved} times: 'off' was not off")
    return result


def reaches(loaded: Sequence[LoadedBpf], workload: Callable[[], object]) -> None:
    """Fail unless ``workload`` runs every object's programs (the control that makes "off" mean something).

    Run once, not in the timed rounds: the run-time accounting it needs costs
    a clock read per run, which would tax the attached rounds only.
    """
    with kernel.run_stats():
        before = _runs(loaded)
        workload()
        moved = [a - b for a, b in zip(_runs(loaded), before, strict=True)]
    if not all(moved):
        raise SystemExit(f"attached programs ran {moved} times: the workload does not reach them")
