"""Resident memory and threads per plugin set, next to node_exporter in the same run.

Starts ``crusoe-metrics-exporter serve`` once per plugin set (procfs only;
everything but eBPF; every built-in with an object store and an NFS server
configured, so nfs_latency, objstore and probes all run), waits until
``/ready`` says every plugin settled, scrapes ``/metrics`` a few times and
then reads the steady resident set (VmRSS), the start-up peak (VmHWM) and
the thread count from ``/proc``. Debian's prometheus-node-exporter with its
default collectors is measured the same way (after the same scrapes).

Each set starts with an empty state directory, so every eBPF plugin compiles
(or fills the compile cache) during its start; the peak includes that.

Run: ``.venv/bin/python benchmarks/footprint_bench.py`` (root for the eBPF
plugins). Target: every built-in below 40 MiB steady.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    exe = Path(sys.executable).with_name("crusoe-metrics-exporter")
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="footprint-state-"))
    try:
        cmd = [str(exe), "serve", "--listen-address", "127.0.0.1", "--port", str(port), "--log-level", "error"]
        if enable:
            cmd += ["--enable", enable]
        return measure(cmd, port, "/ready", {**TARGET_ENV, "CRUSOE_EXPORTER_STATE_DIR": str(state)}, scrapes,
                       settle)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def node(scrapes: int, settle: float) -> Footprint:
    port = free_port()
    cmd = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"]
    return measure(cmd, port, "/metrics", {}, scrapes, settle)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=3, help="scrapes before reading memory")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between the last scrape and the reading")
    ap.add_argument("--quick", action="store_true", help="one scrape, 1 s settle")
    args = ap.parse_args(argv)
    scrapes, settle = (1, 1.0) if args.quick else (args.scrapes, args.settle)
    baseline = node(scrapes, settle) if shutil.which(NODE_EXPORTER) else None
    if baseline is None:
        print(f"!!! {NODE_EXPORTER} not found: run scripts/setup-system.sh --test; comparison skipped !!!")
    print(f"footprint after {scrapes} scrapes + {settle:g}s (VmRSS steady, VmHWM peak, threads)")
    if baseline is not None:
        print(f"  {'node_exporter (default collectors)':36s} rss {baseline.rss_mib:6.1f} MiB  "
              f"peak {baseline.peak_mib:6.1f} MiB  threads {baseline.threads:3d}  {baseline.series:6d} series")
    failed = False
    for name, enable in PLUGIN_SETS.items():
        fp = ours(enable, scrapes, settle)
        ratio = f"  ratio {fp.rss_mib / baseline.rss_mib:.2f}" if baseline is not None else ""
        print(f"  {'ours: ' + name:36s} rss {fp.rss_mib:6.1f} MiB  peak {fp.peak_mib:6.1f} MiB  "
              f"threads {fp.threads:3d}  {fp.series:6d} series{ratio}")
        if not enable:
            met = fp.rss_mib < TARGET_MIB and fp.threads <= 12
            failed = not met
            print(f"  every built-in: rss < {TARGET_MIB:g} MiB and <= 12 threads at idle: "
                  f"{'met' if met else 'NOT MET'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
