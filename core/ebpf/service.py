"""The ``ebpf`` shared service: loads objects for plugins and exports what they cost.

Registered through the ``crusoe_metrics_exporter.services`` entry point
``ebpf`` (the hook at the end of this module), the way a third-party service
would be; a plugin gets it as ``ctx.ebpf`` and calls :meth:`EbpfService.load`.
Its options form the ``[ebpf]`` table. The self metrics tell operators which
programs are attached, how, how many events the kernel skipped them for
(always), and (with ``kernel.bpf_stats_enabled=1``) how much kernel time they
take.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.contract import DoctorCheck, MetricSpec, Sample, ServiceContext, ServiceSpec, Support
from crusoe_metrics_exporter.ebpf import kernel
from crusoe_metrics_exporter.ebpf.environment import check_environment, doctor_checks
from crusoe_metrics_exporter.ebpf.runtime import LoadedBpf, attach_plan, default_state_dir, load, plan_details
from crusoe_metrics_exporter.ebpf.spec import BpfSpec, ProgramStatus
from crusoe_metrics_exporter.hookspecs import hookimpl
from crusoe_metrics_exporter.schema import option

log = logging.getLogger(__name__)

PROGRAM_ATTACHED = MetricSpec(
    "exporter_ebpf_program_attached", "gauge",
    "Whether an eBPF program of a plugin is attached (1) or not (0), and by which method.",
    ("plugin", "program", "method"))
PROGRAM_RUN_SECONDS = MetricSpec(
    "exporter_ebpf_program_run_seconds_total", "counter",
    "Kernel time spent running the eBPF program (needs kernel.bpf_stats_enabled=1).", ("plugin", "program"))
PROGRAM_RUN_COUNT = MetricSpec(
    "exporter_ebpf_program_run_count_total", "counter",
    "Times the eBPF program ran (needs kernel.bpf_stats_enabled=1).", ("plugin", "program"))
PROGRAM_RECURSION_MISSES = MetricSpec(
    "exporter_ebpf_program_recursion_misses_total", "counter",
    "Events the kernel did not run the eBPF program for because a BPF program was already running on that CPU "
    "(tp_btf, raw tracepoint: the same program; perf-event tracepoint, kprobe: any) "
    "(bpf_prog_info.recursion_misses): events the plugin did not see.", ("plugin", "program"))
STATS_ENABLED = MetricSpec(
    "exporter_ebpf_stats_enabled", "gauge",
    "Whether kernel.bpf_stats_enabled is on, i.e. whether eBPF program run time is measured.")

#: The metrics the eBPF runtime exports about the programs it loaded.
EBPF_METRICS: tuple[MetricSpec, ...] = (PROGRAM_ATTACHED, STATS_ENABLED, PROGRAM_RECURSION_MISSES, PROGRAM_RUN_SECONDS,
                                         PROGRAM_RUN_COUNT)


@dataclass(frozen=True)
class EbpfOptions:
    """``[ebpf]``: the eBPF runtime's settings (the state directory is the exporter's ``state_dir``)."""

    mount_tracefs: bool = option(
        "bool", True,
        "Mount tracefs at /sys/kernel/tracing when it is not mounted (needs root); eBPF programs attach through it.",
        env="CRUSOE_EXPORTER_MOUNT_TRACEFS")


class EbpfService:
    def __init__(self, state_dir: Path | None = None, mount_tracefs: bool = True) -> None:
        self.state_dir = state_dir or default_state_dir()
        self.mount_tracefs = mount_tracefs
        self._loaded: dict[str, list[LoadedBpf]] = {}
        self._lock = threading.Lock()

    def support(self, spec: BpfSpec) -> Support:
        """Whether this host can run ``spec``: privileges, bcc, headers, tracefs and an attach point per program.

        Cheap (files and capabilities only, no compiler); ``details`` carry the
        attach plan and the environment facts shown by ``plugins``.
        """
        support = check_environment(self.mount_tracefs, self.state_dir)
        if not support.supported:
            return support
        plan = attach_plan(spec)
        unattachable = {role: why for role, why in plan.items() if isinstance(why, str)}
        if unattachable:
            role, why = next(iter(unattachable.items()))
            return Support.unsupported(f"nothing to attach the {role} program to: {why}")
        return Support.ok(**plan_details(plan), **dict(support.details))

    def load(self, plugin: str, spec: BpfSpec, *, attach: bool = True) -> LoadedBpf:
        """Load ``spec`` for ``plugin`` (raises BpfUnavailable) and track it for the self metrics."""
        loaded = load(spec, self.state_dir, attach=attach, mount_tracefs=self.mount_tracefs)
        self.register(plugin, loaded)
        return loaded

    def register(self, plugin: str, loaded: LoadedBpf) -> None:
        with self._lock:
            self._loaded.setdefault(plugin, []).append(loaded)

    def release(self, plugin: str, loaded: LoadedBpf) -> None:
        """Close ``loaded`` and stop reporting it."""
        with self._lock:
            objs = self._loaded.get(plugin, [])
            if loaded in objs:
                objs.remove(loaded)
            if not objs:
                self._loaded.pop(plugin, None)
        loaded.close()

    def programs(self, plugin: str) -> list[ProgramStatus]:
        """Every program ``plugin`` holds now: variant, attach state and kernel id (tests, diagnostics)."""
        with self._lock:
            objs = list(self._loaded.get(plugin, []))
        return [status for obj in objs for status in obj.programs]

    def collect(self) -> list[Sample]:
        """The runtime's own metrics (``EBPF_METRICS``) for the exporter's scrape."""
        stats_on = kernel.bpf_stats_enabled()
        out = [Sample(STATS_ENABLED.name, (), 1.0 if stats_on else 0.0)]
        with self._lock:
            snapshot = [(plugin, obj) for plugin, objs in self._loaded.items() for obj in objs]
        seen: set[tuple[str, str]] = set()
        for plugin, obj in snapshot:
            for status in obj.programs:
                key = (plugin, status.role)
                if key in seen:
                    continue
                seen.add(key)
                out.append(Sample(PROGRAM_ATTACHED.name, (plugin, status.role, status.method),
                                  1.0 if status.attached else 0.0))
            for role, stats in obj.stats().items():
                if stats.recursion_misses is not None:
                    out.append(Sample(PROGRAM_RECURSION_MISSES.name, (plugin, role), float(stats.recursion_misses)))
                if stats_on:
                    out.append(Sample(PROGRAM_RUN_SECONDS.name, (plugin, role), stats.run_time_ns / 1e9))
                    out.append(Sample(PROGRAM_RUN_COUNT.name, (plugin, role), float(stats.run_cnt)))
        return out

    def stop(self) -> None:
        with self._lock:
            snapshot = [obj for objs in self._loaded.values() for obj in objs]
            self._loaded.clear()
        for obj in snapshot:
            obj.close()


def _factory(ctx: ServiceContext[EbpfOptions]) -> EbpfService:
    return EbpfService(ctx.state_dir, ctx.options.mount_tracefs)


def _doctor(ctx: ServiceContext[EbpfOptions]) -> Iterator[DoctorCheck]:
    for check in doctor_checks(ctx.state_dir):
        yield DoctorCheck(*check)


@hookimpl
def crusoe_metrics_exporter_service() -> ServiceSpec[EbpfOptions]:
    return ServiceSpec(
        name="ebpf",
        description="Compiles plugins' eBPF programs in a helper process, attaches them and reports their cost.",
        factory=_factory,
        options=EbpfOptions,
        metrics=EBPF_METRICS,
        doctor=_doctor,
    )
