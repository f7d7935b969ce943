"""The ``ebpf`` shared service: loads objects for plugins and exports what they cost.

Registered in ``BUILTIN_SERVICES``; a plugin gets it with
``ctx.services.get("ebpf")`` and calls :meth:`EbpfService.load`. The self
metrics tell operators which programs are attached, how, and (with
``kernel.bpf_stats_enabled=1``) how much kernel time they take.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from crusoe_metrics_exporter.contract import Support
from crusoe_metrics_exporter.ebpf import kernel
from crusoe_metrics_exporter.ebpf.environment import check_environment
from crusoe_metrics_exporter.ebpf.runtime import LoadedBpf, attach_plan, default_state_dir, load, plan_details
from crusoe_metrics_exporter.ebpf.spec import BpfSpec, ProgramStatus
from crusoe_metrics_exporter.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "crusoe_vm_exporter_ebpf_"


class EbpfService:
    def __init__(self, settings: Settings | None = None, state_dir: Path | None = None) -> None:
        core = settings.core if settings is not None else {}
        configured = core.get("state_dir")
        self.state_dir = state_dir or (Path(configured) if configured else default_state_dir())
        self.mount_tracefs = bool(core.get("mount_tracefs", True))
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

    def metric_families(self) -> list[Metric]:
        attached = GaugeMetricFamily(
            PREFIX + "program_attached",
            "Whether an eBPF program of a plugin is attached (1) or not (0), and by which method.",
            labels=["plugin", "program", "method"],
        )
        run_time = CounterMetricFamily(
            PREFIX + "program_run_seconds",
            "Kernel time spent running the eBPF program (needs kernel.bpf_stats_enabled=1).",
            labels=["plugin", "program"],
        )
        run_count = CounterMetricFamily(
            PREFIX + "program_run_count",
            "Times the eBPF program ran (needs kernel.bpf_stats_enabled=1).",
            labels=["plugin", "program"],
        )
        stats_on = kernel.bpf_stats_enabled()
        enabled = GaugeMetricFamily(
            PREFIX + "stats_enabled",
            "Whether kernel.bpf_stats_enabled is on, i.e. whether eBPF program run time is measured.",
            value=1.0 if stats_on else 0.0,
        )
        with self._lock:
            snapshot = [(plugin, obj) for plugin, objs in self._loaded.items() for obj in objs]
        seen: set[tuple[str, str]] = set()
        for plugin, obj in snapshot:
            for status in obj.programs:
                key = (plugin, status.role)
                if key in seen:
                    continue
                seen.add(key)
                attached.add_metric([plugin, status.role, status.method], 1.0 if status.attached else 0.0)
            if stats_on:
                for role, stats in obj.stats().items():
                    run_time.add_metric([plugin, role], stats.run_time_ns / 1e9)
                    run_count.add_metric([plugin, role], float(stats.run_cnt))
        families: list[Metric] = [attached, enabled]
        if stats_on:
            families += [run_time, run_count]
        return families

    def stop(self) -> None:
        with self._lock:
            snapshot = [obj for objs in self._loaded.values() for obj in objs]
            self._loaded.clear()
        for obj in snapshot:
            obj.close()
