"""Serving against node_exporter in the same run: start-up, idle cost, concurrent scrapers, abuse.

Four measurements, each printed next to Debian's prometheus-node-exporter
measured the same way in the same run, with the ratio:

1. start-up: exec to the first HTTP answer (ours ``/health``, node_exporter
   ``/``) and to a complete ``/metrics`` (ours: ``/ready`` turned 200, so every
   built-in plugin has settled; node_exporter: the first ``/metrics``), and
   SIGTERM to exit. Ours runs every built-in on this host (three eBPF compiles
   in parallel; no compile cache exists yet, so every start is cold for bcc).
2. idle: CPU time over a window with nobody scraping, and the thread count.
   Ours twice: every built-in (with their own timers: NFS mount refresh every
   30 s, probes every 5 min) and disk_stats alone (the HTTP loop by itself).
3. 50 concurrent scrapers for a while, each scrape on a new connection with
   gzip, both exporters serving the same generated host (8 disks, 100 NFS
   mounts with nconnect=16) from a network namespace: p50/p99 and the kernel's
   ListenOverflows/ListenDrops (nstat) during each run.
4. (``--big``) the hardening target: a generated host with 1,000 NFS mounts
   with nconnect=16 (138k series, 14.5 MB), each exporter in a 256 MiB memory
   cgroup with 1024 open files, under 1,000 idle + 50 slowloris + 10
   never-reading clients and 50 concurrent scrapers at once, while one more
   scraper fetches every 0.25 s: its worst latency, failures, peak memory and
   OOM kills.

Needs root (namespaces, cgroups, eBPF for the start-up of every built-in).
The machine is shared: treat figures as indicative and compare ratios.
Run: ``.venv/bin/python benchmarks/serving_bench.py [--quick] [--big]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from gen_procfs_tree import generate  # noqa: E402
from helpers.cgroup import MemoryCgroup, memory_cgroup  # noqa: E402
from helpers.netns import VethPair, veth_pair  # noqa: E402
from helpers.server import free_port  # noqa: E402

CLI = str(Path(sys.executable).parent / "crusoe-metrics-exporter")
NODE = "prometheus-node-exporter"
LOAD = str(HERE.parent / "tests" / "helpers" / "http_load.py")
MIB = 1024 * 1024


def status(port: int, path: str, host: str = "127.0.0.1", timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def wait_for(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Poll ``path`` every few milliseconds until it answers 200; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(port, path, timeout=1.0) == 200:
            return time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"the exporter exited with {proc.returncode} before {path} answered")
        time.sleep(0.003)
    raise RuntimeError(f"{path} on port {port} did not answer within {timeout:.0f}s")


def terminate(proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - started


def ours(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = {**os.environ, "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1", "LOG_LEVEL": "error", **(env or {})}
    return subprocess.Popen([CLI, "serve", *args], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def node(port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([NODE, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def row(what: str, mine: str, theirs: str, rat: str, target: str = "") -> None:
    print(f"| {what} | {mine} | {theirs} | {rat} | {target} |", flush=True)


# -- 1. start-up --------------------------------------------------------------

def one_start(launch: Callable[[int], subprocess.Popen[bytes]], first_path: str,
              complete_path: str) -> tuple[float, float, float]:
    """Seconds from exec to ``first_path`` answering, to ``complete_path`` answering, and SIGTERM to exit."""
    port = free_port()
    t0 = time.monotonic()
    proc = launch(port)
    first = wait_for(port, first_path, proc) - t0
    complete = wait_for(port, complete_path, proc) - t0
    if status(port, "/metrics", timeout=10) != 200:
        raise RuntimeError(f"/metrics failed after {complete_path}")
    return first, complete, terminate(proc)


def startup(runs: int) -> None:
    mine: list[tuple[float, float, float]] = []
    theirs: list[tuple[float, float, float]] = []
    for _ in range(runs):  # interleaved, so a busy moment of the shared machine hits both
        mine.append(one_start(ours, "/health", "/ready"))
        theirs.append(one_start(node, "/", "/metrics"))
    first, complete, stops = ([m[i] for m in mine] for i in range(3))
    n_first, n_complete, n_stops = ([t[i] for t in theirs] for i in range(3))
    med = statistics.median
    row("exec to first answer (ours /health, node /)", f"{med(first):.3f} s", f"{med(n_first):.3f} s",
        ratio(med(first), med(n_first)), "/health <= 0.3 s")
    row("exec to complete /metrics (ours /ready)", f"{med(complete):.2f} s", f"{med(n_complete):.3f} s",
        ratio(med(complete), med(n_complete)), "warm <= 1.0 s, cold <= 2.5 s (compile cache: not built)")
    row("SIGTERM to exit", f"{med(stops):.2f} s", f"{med(n_stops):.3f} s", ratio(med(stops), med(n_stops)), "< 5 s")
    print(f"(medians of {runs} starts; ours every time with three bcc compiles: there is no compile cache yet; "
          f"first answers ours {', '.join(f'{x:.3f}' for x in first)})", flush=True)


# -- 2. idle --------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def idle(seconds: float) -> None:
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, start, path in (("ours, every built-in", ours, "/ready"),
                                  ("ours, disk_stats only", lambda p: ours(p, "--enable", "disk_stats"), "/ready"),
                                  ("node_exporter", node, "/metrics")):
            port = free_port()
            proc = start(port)
            wait_for(port, path, proc)
            status(port, "/metrics", timeout=10)
            procs[name] = (proc, port)
        time.sleep(2)
        before = {name: cpu_seconds(p.pid) for name, (p, _) in procs.items()}
        time.sleep(seconds)
        used = {name: cpu_seconds(p.pid) - before[name] for name, (p, _) in procs.items()}
        counts = {name: threads(p.pid) for name, (p, _) in procs.items()}
    finally:
        for proc, _ in procs.values():
            terminate(proc)
    base = used["node_exporter"]
    for name in ("ours, every built-in", "ours, disk_stats only"):
        row(f"idle CPU over {seconds:.0f} s, {name}", f"{used[name] * 1000:.1f} ms ({used[name] / seconds:.4%})",
            f"{base * 1000:.1f} ms ({base / seconds:.4%})", ratio(used[name], base), "<= 5x")
    for name in ("ours, every built-in", "ours, disk_stats only"):
        row(f"threads at idle, {name}", str(counts[name]), str(counts["node_exporter"]), "", "<= 12")


# -- 3. and 4. under load, in namespaces ------------------------------------------

@dataclass
class Served:
    ports: dict[str, int]
    #: Per exporter, its memory cgroup when one was asked for.
    groups: dict[str, MemoryCgroup]


@contextmanager
def served_pair(pair: VethPair, tree: Path, limit: int | None, nofile: str | None) -> Iterator[Served]:
    """Ours and node_exporter on the same tree in the server namespace, each in its own cgroup if ``limit``."""
    sysfs = tree / "empty-sysfs"
    sysfs.mkdir(exist_ok=True)
    address = pair.server_addr
    commands = {
        "ours": [CLI, "serve", "--enable", "disk_stats,nfs_stats"],
        "node": [NODE, f"--web.listen-address={address}:9100", f"--path.procfs={tree}", f"--path.sysfs={sysfs}",
                 "--collector.disable-defaults", "--collector.diskstats", "--collector.mountstats",
                 "--log.level=error"],
    }
    served = Served({"ours": 9500, "node": 9100}, {})
    env = {**os.environ, "HOST_PROC_PATH": str(tree), "PORT": "9500", "LISTEN_ADDRESS": address,
           "LOG_LEVEL": "error"}
    with ExitStack() as stack:
        for name, argv in commands.items():
            wrapped = pair.exec_argv(pair.server, ["prlimit", f"--nofile={nofile}", *argv] if nofile else argv)
            if limit:
                # Into the cgroup before "ip netns exec", which mounts a sysfs without the cgroup tree.
                served.groups[name] = stack.enter_context(memory_cgroup(limit))
                wrapped = served.groups[name].wrap(wrapped)
            proc = subprocess.Popen(wrapped, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(terminate, proc)
        load(pair, "ready", "--seconds", "60", "--port", "9500", "--path", "/ready")
        load(pair, "ready", "--seconds", "60", "--port", "9100", "--path", "/metrics")
        yield served


def load(pair: VethPair, *args: str, timeout: float = 300) -> dict[str, object]:
    argv = [sys.executable, LOAD, *args, "--host", pair.server_addr]
    out = pair.run(pair.client, argv, timeout=timeout).stdout
    parsed: dict[str, object] = json.loads(out)
    return parsed


def listen_drops(pair: VethPair) -> int:
    out = pair.run(pair.server, ["nstat", "-az", "TcpExtListenOverflows", "TcpExtListenDrops"]).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("TcpExt"))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


def concurrent_scrapers(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, veth_pair("cmb") as pair:
        tree = generate(Path(tmp) / "proc", disks=8, mounts=100, nconnect=16)
        with served_pair(pair, tree, None, None) as served:
            results = {}
            for name in ("ours", "node"):
                before = listen_drops(pair)
                out = load(pair, "scrapers", "--concurrency", "50", "--seconds", str(seconds), "--port",
                           str(served.ports[name]))
                lat = out["latencies"]
                assert isinstance(lat, list)
                results[name] = (percentile(lat, 0.5), percentile(lat, 0.99), len(lat),
                                 len(out["failures"]),  # type: ignore[arg-type]
                                 listen_drops(pair) - before)
    (p50, p99, n, fails, drops), (np50, np99, nn, nfails, ndrops) = results["ours"], results["node"]
    row("50 scrapers, 8 disks + 100 mounts x16: p50", f"{p50 * 1000:.0f} ms", f"{np50 * 1000:.0f} ms",
        ratio(p50, np50))
    row("50 scrapers: p99", f"{p99 * 1000:.0f} ms", f"{np99 * 1000:.0f} ms", ratio(p99, np99), "< 1 s")
    row("50 scrapers: scrapes / failures", f"{n} / {fails}", f"{nn} / {nfails}", ratio(n, nn))
    row("50 scrapers: listen queue overflows+drops", str(drops), str(ndrops), "", "0")


def abuse_big(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, veth_pair("cma") as pair:
        tree = generate(Path(tmp) / "proc", disks=8, mounts=1000, nconnect=16)
        with served_pair(pair, tree, 256 * MIB, "1024:1024") as served:
            figures = {}
            for name in ("ours", "node"):
                port = str(served.ports[name])
                crowd: dict[str, dict[str, object]] = {}

                def scrapers(port: str = port, crowd: dict[str, dict[str, object]] = crowd) -> None:
                    crowd["out"] = load(pair, "scrapers", "--concurrency", "50", "--seconds", str(seconds - 4),
                                        "--port", port)

                extra = threading.Thread(target=scrapers)
                extra.start()
                out = load(pair, "abuse", "--seconds", str(seconds), "--port", port)
                extra.join()
                lat = out["latencies"]
                assert isinstance(lat, list)
                crowd_lat = crowd["out"]["latencies"]
                assert isinstance(crowd_lat, list)
                figures[name] = (max(lat), len(lat), len(out["failures"]),  # type: ignore[arg-type]
                                 percentile(crowd_lat, 0.99), len(crowd["out"]["failures"]),  # type: ignore[arg-type]
                                 served.groups[name].peak_bytes() / MIB, served.groups[name].oom_kills())
    (mx, n, fails, cp99, cfails, peak, ooms) = figures["ours"]
    (nmx, nn, nfails, ncp99, ncfails, npeak, nooms) = figures["node"]
    row("abuse + 50 scrapers, 1000 mounts x16: the 0.25 s scraper's worst", f"{mx:.2f} s ({n} scrapes, "
        f"{fails} failed)", f"{nmx:.2f} s ({nn} scrapes, {nfails} failed)", ratio(mx, nmx), "< 2 s, none failed")
    row("abuse: the 50 scrapers' p99 / failures", f"{cp99:.2f} s / {cfails}", f"{ncp99:.2f} s / {ncfails}",
        ratio(cp99, ncp99))
    row("abuse: peak cgroup memory / OOM kills (256 MiB limit)", f"{peak:.0f} MiB / {ooms}",
        f"{npeak:.0f} MiB / {nooms}", ratio(peak, npeak), "no OOM")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer starts, shorter windows")
    ap.add_argument("--big", action="store_true", help="also the 138k-series abuse run (about 2 minutes)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("serving_bench needs root (namespaces, cgroups, eBPF)")
        return 1
    print("| what | ours | node_exporter 1.5 | ratio | target |")
    print("|---|---|---|---|---|")
    startup(3 if args.quick else 5)
    idle(15.0 if args.quick else 60.0)
    concurrent_scrapers(5.0 if args.quick else 10.0)
    if args.big:
        abuse_big(20.0 if args.quick else 30.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
