"""Feature detection on the running kernel: tracefs, tracepoints, kprobes, BTF, privileges, stats.

Attach decisions are made from what the kernel exposes (a tracepoint's
directory in tracefs, a function in ``available_filter_functions``, the
kprobe PMU), never from version numbers: distributions backport freely.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from crusoe_metrics_exporter import capabilities
from crusoe_metrics_exporter.capabilities import Unreadable
from crusoe_metrics_exporter.ebpf import syscalls
from crusoe_metrics_exporter.files import iter_lines, read_text

log = logging.getLogger(__name__)

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
KPROBE_PMU_TYPE = Path("/sys/bus/event_source/devices/kprobe/type")
KPROBE_RETPROBE_FORMAT = Path("/sys/bus/event_source/devices/kprobe/format/retprobe")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
KALLSYMS = Path("/proc/kallsyms")
#: available_filter_functions and kallsyms are a few MiB; a runaway file is cut here.
LIST_READ_LIMIT = 64 * 1024 * 1024

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def tracefs_root() -> Path | None:
    """The mounted tracefs (its ``events`` directory present), or None."""
    for root in TRACEFS_MOUNTS:
        try:
            if (root / "events").is_dir():
                return root
        except PermissionError:
            # tracefs is root-only (mode 700): for anyone else it is as good
            # as absent; tracefs_unreadable() says so.
            continue
    return None


#: Plugins start in parallel: one mount, not one per plugin.
_MOUNT_LOCK = threading.Lock()


def tracefs_unreadable() -> Unreadable | None:
    """When tracefs is mounted but this process may not search it (mode 0700 and no CAP_DAC_READ_SEARCH)."""
    for root in TRACEFS_MOUNTS:
        try:
            (root / "events").is_dir()
        except PermissionError as exc:
            return capabilities.unreadable(root, exc)
    return None


def ensure_tracefs(allow_mount: bool) -> tuple[Path | None, str]:
    """Find tracefs, mounting it at /sys/kernel/tracing when absent and allowed.

    Returns (root or None, what happened / why not) for logs and doctor.
    """
    with _MOUNT_LOCK:
        return _ensure_tracefs(allow_mount)


def _ensure_tracefs(allow_mount: bool) -> tuple[Path | None, str]:
    root = tracefs_root()
    if root is not None:
        return root, f"tracefs at {root}"
    denied = tracefs_unreadable()
    if denied is not None:
        return None, denied.reason
    if not allow_mount:
        return None, "tracefs is not mounted and mounting it is disabled (mount_tracefs = false)"
    target = TRACEFS_MOUNTS[0]
    if not target.is_dir():
        return None, f"tracefs is not mounted and {target} does not exist (kernel without CONFIG_TRACING?)"
    try:
        proc = subprocess.run(
            ["mount", "-t", "tracefs", "tracefs", str(target)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"tracefs is not mounted and mounting it failed: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        return None, f"tracefs is not mounted and 'mount -t tracefs' failed: {detail}"
    root = tracefs_root()
    if root is None:
        return None, f"mounted tracefs at {target} but it has no events directory"
    log.info("mounted tracefs at %s", target)
    return root, f"tracefs mounted by the exporter at {target}"


def tracepoint_id(category: str, event: str, root: Path | None = None) -> int | None:
    """The perf id of a tracepoint, or None when this kernel does not have it."""
    base = root or tracefs_root()
    if base is None:
        return None
    try:
        return int(read_text(base / "events" / category / event / "id").strip())
    except (OSError, ValueError):
        return None


def tracepoint_exists(category: str, event: str) -> bool:
    """Whether the running kernel has the tracepoint ``category:event`` (tracefs must be mounted)."""
    return tracepoint_id(category, event) is not None


def tracepoint_has_field(category: str, event: str, field: str) -> bool:
    """Whether the tracepoint's record has ``field`` (its tracefs ``format``); False when unknown.

    Tracepoints gain arguments across releases (``tcp:tcp_retransmit_skb``
    has ``err`` on 6.18, not on 6.1, and fires for failed attempts where it
    has it): programs that read one compile it in only when the running
    kernel has it.
    """
    base = tracefs_root()
    if base is None:
        return False
    try:
        text = read_text(base / "events" / category / event / "format")
    except OSError:
        return False
    for line in text.splitlines():
        declaration = line.strip().partition(";")[0]
        if declaration.startswith("field:") and declaration.split()[-1].partition("[")[0] == field:
            return True
    return False


def kprobe_pmu_type() -> int | None:
    """perf's dynamic PMU type for kprobes; None on kernels without kprobes."""
    try:
        return int(read_text(KPROBE_PMU_TYPE).strip())
    except (OSError, ValueError):
        return None


def kretprobe_config_bit() -> int:
    try:
        text = read_text(KPROBE_RETPROBE_FORMAT).strip()  # "config:0"
        return 1 << int(text.partition(":")[2])
    except (OSError, ValueError):
        return 1


def traceable_functions(names: Iterable[str], root: Path | None = None) -> set[str]:
    """Which of ``names`` can be kprobed: listed in available_filter_functions (else kallsyms).

    The file is streamed rather than cached: it holds tens of thousands of
    entries and we only ever ask about a handful.
    """
    wanted = set(names)
    found: set[str] = set()
    base = root or tracefs_root()
    source = base / "available_filter_functions" if base is not None else None
    try:
        if source is None or not source.exists():
            raise FileNotFoundError
        for line in iter_lines(source, LIST_READ_LIMIT):
            name = line.split(None, 1)[0].decode(errors="replace") if line.strip() else ""
            if name in wanted:
                found.add(name)
        return found
    except OSError:
        pass
    try:
        for line in iter_lines(KALLSYMS, LIST_READ_LIMIT):
            parts = line.decode(errors="replace").split()
            if len(parts) >= 3 and parts[1] in ("T", "t") and parts[2] in wanted:
                found.add(parts[2])
    except OSError:
        pass
    return found


effective_capabilities = capabilities.effective


def privilege_problem() -> str | None:
    """None when this process may load and attach tracing programs, else why not.

    Root in a container holds only the capabilities it was given, so the
    capability set decides, not the uid.
    """
    caps = effective_capabilities()
    if caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1):
        return None
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return f"eBPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); running as {who} without them"


SECCOMP_FIX = (
    "run the exporter under the shipped seccomp profile (deploy/seccomp/crusoe-metrics-exporter.json; "
    "Kubernetes: seccompProfile type Localhost, podman: --security-opt seccomp=PATH) or Unconfined"
)


def seccomp_mode() -> int:
    """0 (none), 1 (strict) or 2 (filter) from /proc/self/status."""
    try:
        for line in read_text("/proc/self/status").splitlines():
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


_KERNEL_ANSWERS = {"bpf": errno.EINVAL, "perf_event_open": errno.EFAULT}


def syscall_filter_problem() -> str | None:
    """None when bpf() and perf_event_open() reach the kernel, else which filter denies them.

    Container runtimes' default seccomp profiles (podman's, CRI-O's) deny
    both unless CAP_SYS_ADMIN is held; without this check the first symptom
    is a map or attach error deep inside the loader. Call it only once the
    capabilities are known to be there.
    """
    from crusoe_metrics_exporter.ebpf import syscalls

    try:
        answers = syscalls.filter_probe()
    except OSError:
        return None  # architecture without known syscall numbers: the loader reports that
    denied = [name for name, err in answers.items() if err != _KERNEL_ANSWERS[name]]
    if not denied:
        return None
    calls = " and ".join(f"{name}()" for name in denied)
    if seccomp_mode() == 2:
        return f"seccomp denies {calls}; use the shipped profile or Unconfined"
    codes = ", ".join(f"{name}: {errno.errorcode.get(answers[name], answers[name])}" for name in denied)
    return f"{calls} denied before reaching the kernel ({codes}) by an LSM policy (AppArmor, SELinux) or lockdown"


def btf_available() -> bool:
    return BTF_VMLINUX.exists()


def bpf_stats_enabled() -> bool:
    try:
        return read_text(BPF_STATS_SYSCTL).strip() not in ("", "0")
    except OSError:
        return False


@contextlib.contextmanager
def run_stats() -> Iterator[None]:
    """Measure every BPF program's run time and count for the duration of the block (BPF_ENABLE_STATS)."""
    fd = syscalls.enable_run_stats()
    try:
        yield
    finally:
        os.close(fd)


def set_bpf_stats(enabled: bool) -> bool:
    """Turn kernel.bpf_stats_enabled on/off; returns the previous state (benchmarks use it)."""
    before = bpf_stats_enabled()
    BPF_STATS_SYSCTL.write_text("1\n" if enabled else "0\n")
    return before
