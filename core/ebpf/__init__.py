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

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crusoe_metrics_exporter.contract import EBPF_SERVICE

if TYPE_CHECKING:
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


#: name -> module, imported on first use: the loader helper runs as
#: ``python -m crusoe_metrics_exporter.ebpf.loader`` and should import only
#: what it needs (a warm start runs three of them at once).
_LAZY: dict[str, str] = {
    **dict.fromkeys(("DoctorCheck", "check_environment", "doctor_checks"), "environment"),
    "bpf_stats_enabled": "kernel",
    **dict.fromkeys(("BpfMap", "LoadedBpf", "attach_plan", "default_state_dir", "load", "plan_details",
                     "want_macro"), "runtime"),
    **dict.fromkeys(("AttachCandidate", "AttachMethod", "BpfSpec", "BpfUnavailable", "BtfEnum", "BtfOffset",
                     "BtfTracepoint", "KernelConstant", "Kprobe", "ProgramSpec", "ProgramStats", "ProgramStatus",
                     "RawTracepoint", "Tracepoint"), "spec"),
}

if not TYPE_CHECKING:
    # Hidden from mypy, which checks the TYPE_CHECKING imports above instead.

    def __getattr__(name: str) -> Any:
        try:
            module = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value


def verify_only(spec: BpfSpec, state_dir: Path | None = None) -> LoadedBpf:
    """Load every candidate of every program through the verifier without attaching any."""
    from crusoe_metrics_exporter.ebpf.runtime import load

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
