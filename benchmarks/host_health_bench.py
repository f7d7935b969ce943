"""Cost of the host-health procfs plugins (psi, meminfo, procstat) against node_exporter on the same files.

Two trees: a copy of this host's /proc/{stat,meminfo,pressure}, and a large
host's shape (1,024 CPU lines and a 1 MB ``intr`` line in /proc/stat, the
case the Go exporter needed a 1 MiB scanner buffer for). For each, the three
plugins' collect runs in-process and Debian's prometheus-node-exporter
(collectors stat, meminfo, pressure) serves the same tree; the medians and
their ratio are printed. node_exporter's time includes HTTP and exposition,
ours does not (add ~1 ms for a scrape of these few series): the ratio is an
upper bound on how much cheaper the parse is, not an end-to-end claim.

Run: ``.venv/bin/python benchmarks/host_health_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crusoe_metrics_exporter.host import discover
from crusoe_metrics_exporter.testing import PluginHarness

PLUGINS = ("psi", "meminfo", "procstat")
NODE_EXPORTER = "prometheus-node-exporter"


def copy_host(root: Path) -> Path:
    (root / "pressure").mkdir(parents=True)
    for name in ("stat", "meminfo", "pressure/cpu", "pressure/memory", "pressure/io"):
        (root / name).write_bytes(Path("/proc", name).read_bytes())
    return root


def large_host(root: Path) -> Path:
    copy_host(root)
    cpus = b"".join(b"cpu%d 4705 150 1120 3501 38 0 45 %d 0 0\n" % (i, i) for i in range(1024))
    intr = b"intr 123456789 " + b"1234567 " * 131_072 + b"\n"
    (root / "stat").write_bytes(b"cpu  4705 150 1120 3501 38 0 45 512 0 0\n" + cpus + intr
                                + b"ctxt 1\nbtime 1\nprocesses 1\nprocs_running 2\nprocs_blocked 0\n")
    return root


def our_collect_ms(proc: Path, rounds: int) -> float:
    collectors = []
    for rec in discover():
        if rec.name in PLUGINS:
            assert rec.spec is not None
            # The testing kit builds the context exactly as the exporter does.
            collectors.append(rec.spec.factory(PluginHarness(rec.spec, host_proc=proc).context))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for c in collectors:
            list(c.collect())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def node_exporter_ms(proc: Path, rounds: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
            f"--path.procfs={proc}", "--collector.stat", "--collector.meminfo", "--collector.pressure"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def scrape() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            conn.close()

        deadline = time.monotonic() + 20
        while True:
            try:
                scrape()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            scrape()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 20 if args.quick else 200
    if shutil.which(NODE_EXPORTER) is None:
        print(f"{NODE_EXPORTER} missing: make setup-test installs it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="cme-bench-") as tmp:
        for label, build in (("this host's files", copy_host), ("1,024 CPUs + 1 MB intr line", large_host)):
            proc = build(Path(tmp) / label.split()[0].strip(","))
            ours = our_collect_ms(proc, rounds)
            node = node_exporter_ms(proc, rounds)
            size = (proc / "stat").stat().st_size
            print(f"{label} (/proc/stat {size / 1e3:.0f} kB): psi+meminfo+procstat collect {ours:.3f} ms median; "
                  f"node_exporter stat+meminfo+pressure scrape {node:.2f} ms; ratio {ours / node:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
