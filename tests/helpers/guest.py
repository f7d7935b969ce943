"""Helpers for tests that run inside the QEMU test guest (``kernel_vm``; see tests/vm).

The guest is Debian 12's stock 6.1 kernel with kprobes, nfsd and the NFS
client. Everything here assumes it runs there as root: it loads modules,
starts daemons and writes to sysrq.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helpers.exporter_scrape import Series, scrape

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.ebpf import EBPF_SERVICE, BpfSpec, Kprobe, ProgramSpec
from crusoe_metrics_exporter.ebpf.service import EbpfService
from crusoe_metrics_exporter.settings import Overrides

#: Serial numbers tests/vm/qemu.py gives the disks it attaches.
SCRATCH_SERIAL = "cme-scratch"
NVME_SERIAL = "cme-nvme-0"


def in_guest() -> bool:
    return os.environ.get("CME_TEST_GUEST") == "1"


def kernel_release() -> str:
    return os.uname().release


def block_device_by_serial(serial: str) -> str:
    """The kernel name (vdb, nvme0n1) of the disk QEMU attached with ``serial``."""
    for dev in sorted(Path("/sys/block").iterdir()):
        for candidate in (dev / "serial", dev / "device" / "serial"):
            with contextlib.suppress(OSError):
                if candidate.read_text().strip() == serial:
                    return dev.name
    raise AssertionError(f"no block device with serial {serial!r} in /sys/block (was the guest booted by tests/vm?)")


def diskstats(name: str) -> list[int]:
    """The numeric fields of ``name``'s /proc/diskstats line (index 0 = reads completed)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == name:
            return [int(f) for f in fields[3:]]
    raise AssertionError(f"{name} is not in /proc/diskstats")


# -- hangs ---------------------------------------------------------------------------------------------------
def blocked_tasks_report(dmesg_lines: int = 200) -> str:
    """Ask the kernel to dump every blocked (D-state) task, then return the kernel log's tail."""
    with contextlib.suppress(OSError):
        Path("/proc/sysrq-trigger").write_text("w\n")
    time.sleep(1.0)
    proc = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30, check=False)
    return "\n".join(proc.stdout.splitlines()[-dmesg_lines:])


class PhaseHung(AssertionError):
    """A workload phase did not finish in time; the message carries the blocked tasks and dmesg."""


def run_phase(name: str, argv: Sequence[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run one workload command under a watchdog.

    On timeout the blocked tasks are dumped (sysrq w, dmesg) into the
    exception, the command's process group is killed, and PhaseHung is raised.
    A process stuck in uninterruptible sleep cannot be reaped: we wait a
    bounded time for it and move on.
    """
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        report = blocked_tasks_report()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        raise PhaseHung(f"workload phase {name!r} did not finish within {timeout:.0f} s "
                        f"({' '.join(argv)}); blocked tasks and kernel log:\n{report}") from None
    if proc.returncode != 0:
        raise AssertionError(f"workload phase {name!r} failed with status {proc.returncode}: {output[-2000:]}")
    return subprocess.CompletedProcess(list(argv), proc.returncode, output, "")


@contextlib.contextmanager
def watchdog(name: str, timeout: float) -> Iterator[None]:
    """Guard in-process work (a scrape, an exporter start): on overrun, dump blocked tasks to the console.

    Python cannot interrupt a thread stuck in the kernel, so this reports
    rather than aborts: the dump reaches the serial console at once (where the
    host's hard timeout will find it), and the block raises after it returns.
    """
    fired = threading.Event()
    dump: list[str] = []

    def fire() -> None:
        fired.set()
        dump.append(blocked_tasks_report())
        print(f"\n!!! WATCHDOG: {name!r} is still running after {timeout:.0f} s; blocked tasks:\n{dump[-1]}",
              flush=True)

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if fired.is_set():
        raise PhaseHung(f"{name!r} took longer than {timeout:.0f} s; blocked tasks:\n{''.join(dump)}")


# -- the exporter ------------------------------------------------------------------------------------------
@dataclass
class GuestExporter:
    """An in-process exporter started once for many tests (a bcc compile costs ~15 s under emulation)."""

    exporter: Exporter
    plugins: tuple[str, ...]
    started_seconds: float
    details: dict[str, dict[str, str]] = field(default_factory=dict)

    def scrape(self, plugins: Sequence[str] | None = None) -> Series:
        with watchdog("scrape", 60):
            return scrape(self.exporter, plugins)


def start_exporter(plugins: Sequence[str], env: Mapping[str, str] | None = None,
                   settings: Mapping[str, str] | None = None, timeout: float = 300) -> GuestExporter:
    """Start the named plugins (each must go active).

    ``settings`` are ``section.key`` -> text, resolved exactly like
    ``--set`` on the command line; ``env`` is the exporter's environment.
    """
    exporter = Exporter.from_environment(environ=dict(env or {}), overrides=Overrides(dict(settings or {})))
    started = time.monotonic()
    with watchdog(f"starting {', '.join(plugins)}", timeout):
        exporter.start(only=list(plugins))
    details = {}
    for rec in exporter.records:
        if rec.name in plugins:
            if rec.state != "active":
                exporter.stop()
                raise AssertionError(f"{rec.name} is {rec.state} on {kernel_release()}: {rec.reason}")
            details[rec.name] = dict(rec.details)
    return GuestExporter(exporter, tuple(plugins), time.monotonic() - started, details)


# -- attach paths ------------------------------------------------------------------------------------------
def only_kprobes(spec: BpfSpec) -> BpfSpec:
    """``spec`` with every program reduced to its kprobe candidates: forces the fallback path."""
    programs = []
    for program in spec.programs:
        kprobes = tuple(c for c in program.candidates if isinstance(c, Kprobe))
        if not kprobes:
            raise AssertionError(f"{spec.name}: program {program.role} has no kprobe fallback")
        programs.append(ProgramSpec(program.role, kprobes))
    return dataclasses.replace(spec, programs=tuple(programs))


def _bpftool(*args: str) -> list[dict[str, object]]:
    proc = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=60, check=True)
    entries: list[dict[str, object]] = json.loads(proc.stdout or "[]")
    return entries


def kernel_attachments() -> list[dict[str, object]]:
    """Everything the kernel has attached through perf events or BPF links (``bpftool perf``/``link``)."""
    return _bpftool("perf", "list") + _bpftool("link", "list")


def _name(method: str, target: str) -> str:
    """The runtime's (method, target) in bpftool's terms: ``tracepoint:<event>``, ``kprobe:<fn>``, ..."""
    return target if method == "kprobe" else f"{method}:{target.rsplit(':', maxsplit=1)[-1]}"


def attachments(ex: GuestExporter, plugin: str) -> tuple[set[str], set[str]]:
    """(what the runtime says ``plugin`` attached, what the kernel lists for those program ids).

    Perf-event attachments (tracepoints, kprobes, kretprobes) are named by
    the kernel itself; so are raw and BTF tracepoints, whether held by a
    BPF link (``tp_name``) or by a raw tracepoint fd (listed by ``bpftool
    perf`` with fd_type ``raw_tracepoint``), spelt with the runtime's method.
    """
    service = ex.exporter.services.get(EBPF_SERVICE)
    assert isinstance(service, EbpfService)
    programs = service.programs(plugin)
    assert programs and all(p.attached for p in programs), programs
    ours = {_name(p.method, p.target) for p in programs}
    perf = {int(str(e["prog_id"])): e for e in _bpftool("perf", "list") if "prog_id" in e}
    links = {int(str(e["prog_id"])): e for e in _bpftool("link", "list") if "prog_id" in e}
    kernel = set()
    for p in programs:
        entry = perf.get(p.prog_id)
        if entry is not None:
            kind = str(entry.get("fd_type"))
            if kind == "raw_tracepoint":
                # An fd from BPF_RAW_TRACEPOINT_OPEN (raw and BTF tracepoints
                # alike): bpftool lists it with perf events, under the event's
                # name; spelt with the runtime's method like a link.
                kernel.add(f"{p.method}:{entry.get('tracepoint')}")
            else:
                kernel.add(f"{kind}:{entry.get('tracepoint') if kind == 'tracepoint' else entry.get('func')}")
        elif p.prog_id in links:
            link = links[p.prog_id]
            kernel.add(f"{p.method}:{link.get('tp_name')}" if link.get("type") == "raw_tracepoint"
                       else f"{link.get('type')}:?")
    return ours, kernel
