"""The large-host soak: 1,000 NFS mounts with nconnect=16, ten scrapers every second, in a 256 MiB cgroup.

Issue 16's bar: the exporter stays under the shipped 256 MiB limit at 1,000
nconnect=16 mounts (138k series, 14.5 MB of text) scraped every second by
ten scrapers for five minutes. The exporter (disk_stats, disk_usage,
nfs_stats, meminfo, psi, procstat) runs in a memory cgroup of that size; ten
asyncio scrapers each fetch /metrics (gzip, a new connection each time)
once a second. Every second the cgroup's usage and the exporter's resident
memory are sampled. The baseline, measured in the same run on the same tree
and load for a shorter time, is Debian's prometheus-node-exporter
(diskstats and mountstats collectors) outside any cgroup.

Prints peak memory, OOM kills, scrape latency percentiles and failures, and
the ratios to node_exporter. Needs root (the cgroup). Run it alone, under
``flock /work/heavy.lock``: ``.venv/bin/python benchmarks/soak_bench.py``
(``--seconds 30`` for a short run). Exits 1 if the exporter was OOM-killed,
exited, or answered a scrape with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from gen_procfs_tree import generate  # noqa: E402
from helpers.cgroup import cgroup_unavailable, memory_cgroup  # noqa: E402
from helpers.http_load import Stats, scraper  # noqa: E402
from helpers.server import free_port  # noqa: E402
from procfs_bench import node_cmd, wait_ready  # noqa: E402

PLUGINS = ("disk_stats", "disk_usage", "nfs_stats", "meminfo", "psi", "procstat")
LIMIT = 256 * 1024 * 1024


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _load(port: int, seconds: float, scrapers: int) -> Stats:
    stats = Stats()

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(scraper("127.0.0.1", port, stats, until, 1.0) for _ in range(scrapers)))

    asyncio.run(run())
    return stats


def _sampled(pid: int, seconds: float, usage: Path | None, samples: list[tuple[int, int]],
             stop: threading.Event) -> None:
    while not stop.wait(1.0):
        cgroup = int(usage.read_text()) if usage is not None and usage.exists() else 0
        samples.append((cgroup, _rss(pid)))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def soak_ours(tree: Path, seconds: float, scrapers: int) -> dict[str, object]:
    port = free_port()
    exe = Path(sys.executable).with_name("crusoe-metrics-exporter")
    cmd = [str(exe), "serve", "--listen-address", "127.0.0.1", "--port", str(port), "--host-proc-path", str(tree),
           "--enable", ",".join(PLUGINS), "--log-level", "warning"]
    with memory_cgroup(LIMIT) as cgroup, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cgroup.wrap(cmd), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_ready(port, proc)
            samples: list[tuple[int, int]] = []
            stop = threading.Event()
            usage = cgroup.path / ("memory.current" if cgroup.v2 else "memory.usage_in_bytes")
            sampler = threading.Thread(target=_sampled, args=(proc.pid, seconds, usage, samples, stop))
            sampler.start()
            stats = _load(port, seconds, scrapers)
            stop.set()
            sampler.join()
            alive = proc.poll() is None
            oom = cgroup.oom_kills()
            peak = cgroup.peak_bytes()
            hwm = 0
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if alive else []:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        err.seek(0)
        log = err.read().decode(errors="replace")
    rss = [r for _, r in samples]
    return {
        "alive": alive, "oom_kills": oom, "cgroup_peak_mib": peak / 2**20, "rss_peak_mib": hwm / 2**20,
        "rss_last_minute_mib": statistics.median(rss[-60:]) / 2**20 if rss else 0.0,
        "scrapes": len(stats.latencies), "failures": len(stats.failures), "first_failures": stats.failures[:3],
        "p50_s": _percentile(stats.latencies, 0.5), "p99_s": _percentile(stats.latencies, 0.99),
        "max_s": max(stats.latencies, default=float("nan")), "tracebacks": log.count("Traceback"),
    }


def soak_node(tree: Path, seconds: float, scrapers: int) -> dict[str, object]:
    if shutil.which("prometheus-node-exporter") is None:
        return {}
    sysfs = tree / "empty-sysfs"
    sysfs.mkdir(exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(node_cmd(tree, sysfs, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        samples: list[tuple[int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sampled, args=(proc.pid, seconds, None, samples, stop))
        sampler.start()
        stats = _load(port, seconds, scrapers)
        stop.set()
        sampler.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"rss_peak_mib": max((r for _, r in samples), default=0) / 2**20, "scrapes": len(stats.latencies),
            "p50_s": _percentile(stats.latencies, 0.5), "p99_s": _percentile(stats.latencies, 0.99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--baseline-seconds", type=float, default=30.0)
    ap.add_argument("--mounts", type=int, default=1000)
    ap.add_argument("--scrapers", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="30 s instead of 5 min (make bench --quick)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.baseline_seconds = 30.0, 10.0
    reason = cgroup_unavailable()
    if reason:
        print(f"soak: skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="soak") as tmp:
        tree = Path(tmp) / "proc"
        generate(tree, disks=8, mounts=args.mounts, nconnect=16, seed=1)
        ours = soak_ours(tree, args.seconds, args.scrapers)
        node = soak_node(tree, args.baseline_seconds, args.scrapers)
    print(json.dumps({"ours": ours, "node_exporter": node}, indent=2))
    if node:
        print(f"ratio to node_exporter: RSS peak {ours['rss_peak_mib'] / node['rss_peak_mib']:.1f}x "  # type: ignore[operator]
              f"p50 {ours['p50_s'] / node['p50_s']:.2f}x p99 {ours['p99_s'] / node['p99_s']:.2f}x")  # type: ignore[operator]
    print(f"soak {args.seconds:g}s, {args.mounts} nconnect=16 mounts, {args.scrapers} scrapers/s: "
          f"cgroup peak {ours['cgroup_peak_mib']:.0f} MiB of {LIMIT // 2**20}, RSS peak {ours['rss_peak_mib']:.0f} "
          f"MiB, OOM kills {ours['oom_kills']}, failures {ours['failures']} of {ours['scrapes']}")
    ok = ours["alive"] and ours["oom_kills"] == 0 and ours["failures"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
