"""Start-up, idle cost, resident memory and threads, next to node_exporter in the same run.

Start-up: exec to the first ``/health`` answer and to a complete ``/metrics``
(``/ready`` turned 200: every built-in settled), cold (empty state directory:
every eBPF object is compiled) and warm (the same state directory again:
eBPF objects come from the compile cache); node_exporter: exec to its first
``/metrics``. Medians of ``--starts`` runs.

Idle: CPU time over ``--idle`` seconds with nobody scraping, every built-in
active, against node_exporter with its default collectors over the same
window, both running at once: per thread from schedstat (nanoseconds), or
utime+stime from /proc/<pid>/stat (clock ticks, threads that ended included)
when that is larger. Also each process's wake-ups (times a thread was put on
a CPU) and, counted independently, the host events that wake ours by design
(mount-table changes, kernel log records), so a figure from a busy machine
can be told from a quiet one; the 5x target is judged on the slices of the
window without such an event. The probe round, a configured timer every
PROBE_INTERVAL (5 min), is pinned to start-up (PROBE_JITTER=0s) so it stays
out of the window. ``--idle-only`` runs just this.

Memory: starts ``crusoe-metrics-exporter serve`` once per plugin set (procfs only;
everything but eBPF; every built-in with an object store and an NFS server
configured, so nfs_latency, objstore and probes all run), waits until
``/ready`` says every plugin settled, scrapes ``/metrics`` a few times and
then reads the steady resident set (VmRSS), the start-up peak (VmHWM) and
the thread count from ``/proc``. Debian's prometheus-node-exporter with its
default collectors is measured the same way (after the same scrapes).

Each set starts with an empty state directory, so every eBPF plugin compiles
(or fills the compile cache) during its start; the peak includes that.

Run: ``.venv/bin/python benchmarks/footprint_bench.py`` (root for the eBPF
plugins). Targets (2-core machine): warm start to a complete /metrics <= 1.0 s,
cold <= 2.5 s, /health <= 0.3 s, idle CPU <= 5x node_exporter, every built-in
below 40 MiB steady with <= 12 threads.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.server import free_port

NODE_EXPORTER = "prometheus-node-exporter"
PROCFS = "disk_stats,disk_usage,nfs_stats,psi,meminfo,procstat"
NO_EBPF = PROCFS + ",probes,kernel_lockups"
#: name -> value of --enable ("" = every built-in).
PLUGIN_SETS = {"procfs plugins": PROCFS, "every built-in but eBPF": NO_EBPF, "every built-in": ""}
TARGET_MIB = 40.0
#: Configured targets so the target-driven plugins run (loopback only).
TARGET_ENV = {"OBJSTORE_ENDPOINT_IPS": "127.0.0.1", "NFS_SERVER_IPS": "127.0.0.1"}


@dataclass
class Footprint:
    rss_mib: float
    peak_mib: float
    threads: int
    series: int


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} on port {port} did not answer 200 within {timeout:.0f}s")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(cmd: Sequence[str], port: int, ready_path: str, env: dict[str, str], scrapes: int,
            settle: float) -> Footprint:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **env})
    try:
        wait_for(port, ready_path, proc)
        body = b""
        for _ in range(scrapes):
            body = get(port, "/metrics")[1]
        time.sleep(settle)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return Footprint(status_kib(proc.pid, "VmRSS") / 1024, status_kib(proc.pid, "VmHWM") / 1024,
                         len(os.listdir(f"/proc/{proc.pid}/task")), series)
    except RuntimeError:
        proc.kill()
        sys.stderr.write(proc.communicate(timeout=10)[1].decode(errors="replace")[-2000:])
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ours(enable: str, scrapes: int, settle: float) -> Footprint:
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="footprint-state-"))
    try:
        cmd = ours_cmd(port) + (["--enable", enable] if enable else [])
        return measure(cmd, port, "/ready", {**TARGET_ENV, "CRUSOE_EXPORTER_STATE_DIR": str(state)}, scrapes,
                       settle)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def node(scrapes: int, settle: float) -> Footprint:
    port = free_port()
    return measure(node_cmd(port), port, "/metrics", {}, scrapes, settle)


def _spawn(cmd: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _until(port: int, path: str, proc: subprocess.Popen[bytes], started: float) -> float:
    wait_for(port, path, proc)
    return time.monotonic() - started


def ours_cmd(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("crusoe-metrics-exporter")
    return [str(exe), "serve", "--listen-address", "127.0.0.1", "--port", str(port), "--log-level", "error"]


def node_cmd(port: int) -> list[str]:
    return [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"]


def start_ours(state: Path) -> tuple[float, float, list[str]]:
    """Seconds from exec to /health and to a complete /metrics (every plugin settled), and the plugins that
    settled other than active (each with its state)."""
    port = free_port()
    started = time.monotonic()
    proc = _spawn(ours_cmd(port), {**TARGET_ENV, "CRUSOE_EXPORTER_STATE_DIR": str(state)})
    try:
        health = _until(port, "/health", proc, started)
        _until(port, "/ready", proc, started)
        status, body = get(port, "/metrics")
        complete = time.monotonic() - started
        if status != 200 or b'state="starting"} 1.0' in body:
            raise RuntimeError("/metrics after /ready still shows a plugin starting")
        records = json.loads(get(port, "/plugins.json")[1])
        inactive = [f"{r['name']} {r['state']} ({r.get('reason', '')})" for r in records if r["state"] != "active"]
        return health, complete, inactive
    finally:
        _stop(proc)


def start_node() -> float:
    port = free_port()
    started = time.monotonic()
    proc = _spawn(node_cmd(port), {})
    try:
        return _until(port, "/metrics", proc, started)
    finally:
        _stop(proc)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, threads that ended included (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_ns(pid: int) -> dict[str, tuple[int, int]]:
    """Per live thread: nanoseconds on a CPU and times it was put on one (schedstat: exact below a clock tick)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            run_ns, _wait_ns, slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            out[tid] = (int(run_ns), int(slices))
        except (OSError, ValueError):
            continue
    return out


@dataclass
class CpuUse:
    seconds: float
    #: The smallest CPU time the reading can show: a nanosecond from schedstat, a clock tick without it.
    resolution: float
    #: Times a thread of the process was put on a CPU (each wake-up is at least one), live threads only.
    wakeups: int


@dataclass
class CpuMark:
    ticks: float
    threads: dict[str, tuple[int, int]]


def cpu_mark(pid: int) -> CpuMark:
    return CpuMark(cpu_seconds(pid), thread_ns(pid))


def cpu_since(pid: int, before: CpuMark) -> CpuUse:
    after = cpu_mark(pid)
    precise = sum(ns - before.threads.get(tid, (0, 0))[0] for tid, (ns, _) in after.threads.items()) / 1e9
    wakeups = sum(n - before.threads.get(tid, (0, 0))[1] for tid, (_, n) in after.threads.items())
    resolution = 1e-9 if after.threads else 1 / os.sysconf("SC_CLK_TCK")
    return CpuUse(max(precise, after.ticks - before.ticks), resolution, wakeups)


def total(uses: Sequence[CpuUse]) -> CpuUse:
    return CpuUse(sum(u.seconds for u in uses), max((u.resolution for u in uses), default=1e-9),
                  sum(u.wakeups for u in uses))


class HostEvents:
    """What wakes an idle exporter by design, seen independently: changes of the host's mount table (a
    poll() of our own on /proc/1/mounts) and kernel log records (/dev/kmsg, from its end), with when."""

    def __init__(self) -> None:
        self.mount_changes: list[float] = []
        #: None when /dev/kmsg cannot be read (not root): unknown, not zero.
        self.kernel_messages: list[float] | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._mounts = os.open("/proc/1/mounts", os.O_RDONLY | os.O_CLOEXEC)
        self._kmsg: int | None = None
        try:
            self._kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._kmsg, 0, os.SEEK_END)
            self.kernel_messages = []
        except OSError:
            pass
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> HostEvents:
        self._thread.start()
        return self

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._mounts, select.POLLPRI)
        poller.register(self._stop_r, select.POLLIN)
        if self._kmsg is not None:
            poller.register(self._kmsg, select.POLLIN)
        while True:
            fds = {fd for fd, _ in poller.poll()}
            now = time.monotonic()
            if self._stop_r in fds:
                return
            if self._mounts in fds:
                self.mount_changes.append(now)
            if self._kmsg is not None and self._kmsg in fds:
                while True:
                    try:
                        os.read(self._kmsg, 8192)
                    except BlockingIOError:
                        break
                    except BrokenPipeError:  # records overwritten before we read them
                        continue
                    assert self.kernel_messages is not None
                    self.kernel_messages.append(now)

    def any_between(self, start: float, end: float) -> bool:
        return any(start <= t <= end for t in (*self.mount_changes, *(self.kernel_messages or ())))

    def __exit__(self, *exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=10)
        for fd in (self._mounts, self._stop_r, self._stop_w, self._kmsg):
            if fd is not None:
                os.close(fd)


#: The idle window is measured in slices of this many seconds ...
IDLE_SLICE_S = 5.0
#: ... and a slice is quiet when no host event fell in it or this long before it (a mount change is read
#: up to a second later, coalesced).
EVENT_REACH_S = 2.0


@dataclass
class Idle:
    ours: CpuUse
    node: CpuUse
    #: The same over the quiet slices only, and how many seconds they make.
    ours_quiet: CpuUse
    node_quiet: CpuUse
    quiet_s: float
    ours_threads: int
    node_threads: int
    events: HostEvents


def idle(seconds: float) -> Idle:
    """CPU over ``seconds`` with nobody scraping: ours (every built-in), node_exporter; threads; host events."""
    state = Path(tempfile.mkdtemp(prefix="footprint-idle-"))
    ours_port, node_port = free_port(), free_port()
    # The probe round is a configured timer (PROBE_INTERVAL, 5 min): without jitter the first runs at start,
    # before the window, and the next after it; with the default jitter it lands anywhere in the first 30 s.
    env = {**TARGET_ENV, "PROBE_JITTER": "0s", "CRUSOE_EXPORTER_STATE_DIR": str(state)}
    ours = _spawn(ours_cmd(ours_port), env)
    node = _spawn(node_cmd(node_port), {})
    try:
        wait_for(ours_port, "/ready", ours)
        wait_for(node_port, "/metrics", node)
        time.sleep(5)  # start-up settles (the first probe round, discovery)
        pids = (ours.pid, node.pid)
        slices: list[tuple[float, float, CpuUse, CpuUse]] = []
        with HostEvents() as events:
            end = time.monotonic() + seconds
            # Both read at every slice boundary, so load from elsewhere hits both alike.
            while (left := end - time.monotonic()) > 0.05:
                began, marks = time.monotonic(), [cpu_mark(pid) for pid in pids]
                time.sleep(min(IDLE_SLICE_S, left))
                ours_use, node_use = (cpu_since(pid, mark) for pid, mark in zip(pids, marks, strict=True))
                slices.append((began, time.monotonic(), ours_use, node_use))
        quiet = [sl for sl in slices if not events.any_between(sl[0] - EVENT_REACH_S, sl[1])]
        threads = len(os.listdir(f"/proc/{ours.pid}/task")), len(os.listdir(f"/proc/{node.pid}/task"))
        return Idle(total([sl[2] for sl in slices]), total([sl[3] for sl in slices]),
                    total([sl[2] for sl in quiet]), total([sl[3] for sl in quiet]),
                    sum(sl[1] - sl[0] for sl in quiet), threads[0], threads[1], events)
    finally:
        _stop(ours)
        _stop(node)
        shutil.rmtree(state, ignore_errors=True)


def report_startup(starts: int, have_node: bool) -> bool:
    cold, warm = [], []
    for _ in range(starts):
        state = Path(tempfile.mkdtemp(prefix="footprint-start-"))
        try:
            cold.append(start_ours(state))
            warm.append(start_ours(state))
        finally:
            shutil.rmtree(state, ignore_errors=True)
    node = statistics.median(start_node() for _ in range(starts)) if have_node else None
    health = statistics.median(h for h, _, _ in cold + warm)
    cold_s = statistics.median(c for _, c, _ in cold)
    warm_s = statistics.median(c for _, c, _ in warm)
    inactive = sorted({name for _, _, names in cold + warm for name in names})
    print(f"start-up, median of {starts} (exec to answer), every built-in")
    versus = f"   node_exporter first /metrics {node:5.2f} s" if node is not None else ""
    print(f"  /health                      {health:5.2f} s  (target <= 0.3 s){versus}")
    print(f"  complete /metrics, cold      {cold_s:5.2f} s  (target <= 2.5 s)"
          + (f"   ratio {cold_s / node:.0f}x" if node else ""))
    print(f"  complete /metrics, warm      {warm_s:5.2f} s  (target <= 1.0 s)"
          + (f"   ratio {warm_s / node:.0f}x" if node else ""))
    # A plugin this host gives nothing to monitor (nvme without controllers) settles unsupported; one that
    # failed, or came up differently warm than cold, is a miss.
    missed = [name for name in inactive if " unsupported " not in name]
    print(f"  settled other than active: {'none' if not inactive else '; '.join(inactive)}"
          f"{' (NOT MET: failed)' if missed else ''}")
    return health <= 0.3 and cold_s <= 2.5 and warm_s <= 1.0 and not missed


def _ratio(ours: CpuUse, node: CpuUse) -> tuple[float, str]:
    """The baseline the 5x target applies to, and how the ratio reads."""
    if node.seconds >= node.resolution:
        return node.seconds, f"{ours.seconds / node.seconds:.1f}x node_exporter"
    # No ratio against nothing: the strictest figure the clock can show stands in for node_exporter's.
    return node.resolution, (f"node_exporter used nothing measurable; ours {ours.seconds / node.resolution:.0f}x "
                             f"the clock's resolution ({node.resolution * 1e9:g} ns)")


def report_idle(seconds: float) -> bool:
    m = idle(seconds)
    events = m.events
    kernel = "unknown (not root)" if events.kernel_messages is None else str(len(events.kernel_messages))
    print(f"idle for {seconds:g} s, every built-in, nobody scraping, probe round at start (PROBE_JITTER=0s)")
    print(f"  host events meanwhile (each may wake ours by design, not node_exporter): mount-table changes "
          f"{len(events.mount_changes)}, kernel log records {kernel}")
    for name, ours, node in (("whole window", m.ours, m.node),
                             (f"quiet slices ({m.quiet_s:.0f} s without a host event)", m.ours_quiet, m.node_quiet)):
        print(f"  {name}: CPU ours {ours.seconds * 1000:.3f} ms ({ours.wakeups} wake-ups), node_exporter "
              f"{node.seconds * 1000:.3f} ms ({node.wakeups} wake-ups): {_ratio(ours, node)[1]}")
    print(f"  threads ours {m.ours_threads}, node_exporter {m.node_threads} (target <= 12)")
    # The target (<= 5x node_exporter) is judged where nothing happened on the host; with no quiet slice at all,
    # on the whole window.
    judged = (m.ours_quiet, m.node_quiet) if m.quiet_s > 0 else (m.ours, m.node)
    base, _ = _ratio(*judged)
    print(f"  judged on the {'quiet slices' if m.quiet_s > 0 else 'whole window (no quiet slice)'} (target <= 5x)")
    return judged[0].seconds <= 5 * base and m.ours_threads <= 12


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=3, help="scrapes before reading memory")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between the last scrape and the reading")
    ap.add_argument("--starts", type=int, default=5, help="cold+warm start pairs (median reported)")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of the idle measurement")
    ap.add_argument("--quick", action="store_true", help="one scrape, 1 s settle, 3 starts, 20 s idle")
    ap.add_argument("--idle-only", action="store_true", help="only the idle measurement (needs node_exporter)")
    args = ap.parse_args(argv)
    scrapes, settle, starts, idle_s = ((1, 1.0, 3, 20.0) if args.quick
                                       else (args.scrapes, args.settle, args.starts, args.idle))
    have_node = shutil.which(NODE_EXPORTER) is not None
    if not have_node:
        print(f"!!! {NODE_EXPORTER} not found: run scripts/setup-system.sh --test; comparison skipped !!!")
        if args.idle_only:
            return 1
    if args.idle_only:
        met = report_idle(idle_s)
        print(f"idle target: {'met' if met else 'NOT MET'}")
        return 0 if met else 1
    met = report_startup(starts, have_node)
    if have_node:
        met = report_idle(idle_s) and met
    baseline = node(scrapes, settle) if have_node else None
    print(f"memory after {scrapes} scrapes + {settle:g}s (VmRSS steady, VmHWM peak, threads)")
    if baseline is not None:
        print(f"  {'node_exporter (default collectors)':36s} rss {baseline.rss_mib:6.1f} MiB  "
              f"peak {baseline.peak_mib:6.1f} MiB  threads {baseline.threads:3d}  {baseline.series:6d} series")
    for name, enable in PLUGIN_SETS.items():
        fp = ours(enable, scrapes, settle)
        ratio = f"  ratio {fp.rss_mib / baseline.rss_mib:.2f}" if baseline is not None else ""
        print(f"  {'ours: ' + name:36s} rss {fp.rss_mib:6.1f} MiB  peak {fp.peak_mib:6.1f} MiB  "
              f"threads {fp.threads:3d}  {fp.series:6d} series{ratio}")
        if not enable:
            within = fp.rss_mib < TARGET_MIB
            met = met and within
            print(f"  every built-in: rss < {TARGET_MIB:g} MiB: {'met' if within else 'NOT MET'}")
    print(f"all targets: {'met' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
