"""Can this host run the exporter's eBPF plugins? Answers for check_support and ``doctor``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from crusoe_metrics_exporter.contract import Support
from crusoe_metrics_exporter.ebpf import kernel
from crusoe_metrics_exporter.ebpf.bcc_locator import INSTALL_HINT, BccMissing, libbcc_present, locate
from crusoe_metrics_exporter.ebpf.headers import HeadersUnavailable, resolve_headers
from crusoe_metrics_exporter.ebpf.runtime import default_state_dir


class DoctorCheck(NamedTuple):
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _bcc_problem() -> tuple[str | None, str]:
    try:
        path = locate()
    except BccMissing as exc:
        return str(exc), ""
    if libbcc_present() is None:
        return f"bcc Python bindings at {path} but libbcc.so.0 is missing; {INSTALL_HINT}", str(path)
    return None, str(path)


PRIVILEGE_FIX = ("run as root, or grant CAP_BPF and CAP_PERFMON (systemd: AmbientCapabilities=; "
                 "Kubernetes: securityContext.capabilities.add: [BPF, PERFMON])")
TRACEFS_FIX = "mount -t tracefs tracefs /sys/kernel/tracing (in a container: mount the host's /sys)"


def check_environment(mount_tracefs: bool = True, state_dir: Path | None = None) -> Support:
    """Support.ok with facts (headers, tracefs, bcc path), or unsupported with the first blocker.

    Cheap and without bcc: it looks at files and capabilities only; the
    compiler runs when a plugin starts.
    """
    problem = kernel.privilege_problem()
    if problem:
        return Support.unsupported(problem, fix=PRIVILEGE_FIX)
    filtered = kernel.syscall_filter_problem()
    if filtered:
        return Support.unsupported(filtered, fix=kernel.SECCOMP_FIX)
    bcc_problem, bcc_path = _bcc_problem()
    if bcc_problem:
        return Support.unsupported(bcc_problem)
    root, tracefs_detail = kernel.ensure_tracefs(mount_tracefs)
    if root is None:
        denied = kernel.tracefs_unreadable()
        return Support.unsupported(tracefs_detail, fix=denied.fix if denied else TRACEFS_FIX)
    try:
        headers = resolve_headers(state_dir or default_state_dir())
    except HeadersUnavailable as exc:
        return Support.unsupported(str(exc), fix=exc.fix)
    details = {
        "bcc": bcc_path,
        "tracefs": str(root),
        "kernel_headers": headers.description,
        "btf": "present" if kernel.btf_available() else "absent",
        "bpf_stats": "enabled" if kernel.bpf_stats_enabled() else "disabled (sysctl kernel.bpf_stats_enabled=1)",
    }
    return Support.ok(**details)


def doctor_checks(state_dir: Path | None = None) -> list[DoctorCheck]:
    """Every eBPF prerequisite, each with what was found and how to fix it."""
    checks: list[DoctorCheck] = []
    problem = kernel.privilege_problem()
    checks.append(
        DoctorCheck(
            "ebpf privileges",
            problem is None,
            problem or ("root" if os.geteuid() == 0 else "CAP_BPF and CAP_PERFMON present"),
            "" if problem is None else PRIVILEGE_FIX,
        )
    )
    if problem is None:
        filtered = kernel.syscall_filter_problem()
        checks.append(
            DoctorCheck(
                "syscall filter",
                filtered is None,
                filtered or f"bpf() and perf_event_open() reach the kernel (seccomp mode {kernel.seccomp_mode()})",
                "" if filtered is None else kernel.SECCOMP_FIX,
            )
        )
    bcc_problem, bcc_path = _bcc_problem()
    checks.append(
        DoctorCheck("bcc", bcc_problem is None, bcc_problem or f"bcc Python bindings at {bcc_path}",
                    "" if bcc_problem is None else "apt-get install python3-bpfcc")
    )
    root = kernel.tracefs_root()
    denied = kernel.tracefs_unreadable() if root is None else None
    if root is not None:
        checks.append(DoctorCheck("tracefs", True, f"mounted at {root}"))
    elif denied is not None:
        checks.append(DoctorCheck("tracefs", False, denied.reason, denied.fix))
    else:
        checks.append(DoctorCheck("tracefs", False,
                                  "not mounted (the exporter mounts it at start when running as root)", TRACEFS_FIX))
    try:
        headers = resolve_headers(state_dir or default_state_dir())
        checks.append(
            DoctorCheck(
                "kernel headers",
                True,
                headers.description,
                "" if headers.exact else f"for exact headers install linux-headers-{os.uname().release} if packaged",
            )
        )
    except (HeadersUnavailable, OSError) as exc:
        fix = getattr(exc, "fix", "") or "install your distribution's linux-headers"
        checks.append(DoctorCheck("kernel headers", False, str(exc), fix))
    btf = kernel.btf_available()
    checks.append(
        DoctorCheck("kernel BTF", btf, "/sys/kernel/btf/vmlinux present" if btf else "no /sys/kernel/btf/vmlinux",
                    "" if btf else "use a kernel built with CONFIG_DEBUG_INFO_BTF (5.8+ distribution kernels)")
    )
    kprobes = kernel.kprobe_pmu_type() is not None
    checks.append(
        DoctorCheck(
            "kprobes",
            True,
            "available (used as fallback where a tracepoint is missing)" if kprobes
            else "not available on this kernel; tracepoint variants are used",
        )
    )
    stats = kernel.bpf_stats_enabled()
    checks.append(
        DoctorCheck(
            "bpf run-time stats",
            True,
            "kernel.bpf_stats_enabled=1: per-program cost is exported" if stats
            else "kernel.bpf_stats_enabled=0: per-program run time is not exported",
            "" if stats else "sysctl -w kernel.bpf_stats_enabled=1 to measure what the exporter's programs cost",
        )
    )
    return checks
