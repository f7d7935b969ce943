"""eBPF runtime shared by the eBPF plugins.

bcc compiles each plugin's C source in a short-lived helper process
(:mod:`.loader`); this process only attaches the programs and reads maps
with ``bpf(2)``, so it never carries bcc's compiler in memory. Plugins use:

* :class:`BpfSpec`, :class:`ProgramSpec` and the attach candidates
  :class:`BtfTracepoint`, :class:`RawTracepoint`, :class:`Tracepoint`,
  :class:`Kprobe` to declare their object and how to attach it (best first);
  :class:`BtfOffset`, :class:`BtfEnum` for kernel constants read from BTF;
* :func:`load` (or the ``ebpf`` service's ``load``) to get a :class:`LoadedBpf`;
* :func:`check_environment` in ``check_support``; :func:`verify_only` in tests.
"""

from __future__ import annotations

from pathlib import Path

from crusoe_metrics_exporter.contract import EBPF_SERVICE
from crusoe_metrics_exporter.ebpf.environment import DoctorCheck, check_environment, doctor_checks
from crusoe_metrics_exporter.ebpf.kernel import bpf_stats_enabled
from crusoe_metrics_exporter.ebpf.runtime import (
    BpfMap,
    LoadedBpf,
    attach_plan,
    default_state_dir,
    load,
    plan_details,
    want_macro,
)
from crusoe_metrics_exporter.ebpf.spec import (
    AttachCandidate,
    AttachMethod,
    BpfSpec,
    BpfUnavailable,
    BtfEnum,
    BtfOffset,
    BtfTracepoint,
    KernelConstant,
    Kprobe,
    ProgramSpec,
    ProgramStats,
    ProgramStatus,
    RawTracepoint,
    Tracepoint,
)


def verify_only(spec: BpfSpec, state_dir: Path | None = None) -> LoadedBpf:
    """Load every candidate of every program through the verifier without attaching any."""
    return load(spec, state_dir, attach=False)


__all__ = [
    "EBPF_SERVICE",
    "AttachCandidate",
    "AttachMethod",
    "BpfMap",
    "BpfSpec",
    "BpfUnavailable",
    "BtfEnum",
    "BtfOffset",
    "BtfTracepoint",
    "DoctorCheck",
    "KernelConstant",
    "Kprobe",
    "LoadedBpf",
    "ProgramSpec",
    "ProgramStats",
    "ProgramStatus",
    "RawTracepoint",
    "Tracepoint",
    "attach_plan",
    "bpf_stats_enabled",
    "check_environment",
    "default_state_dir",
    "doctor_checks",
    "load",
    "plan_details",
    "verify_only",
    "want_macro",
]
