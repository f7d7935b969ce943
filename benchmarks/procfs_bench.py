"""Scrape time of the procfs plugins against node_exporter on the same tree.

Generates a synthetic procfs tree (64 virtio disks, N NFS mounts with
nconnect=16), serves it with ``crusoe-metrics-exporter serve`` (plugins
disk_stats, disk_usage, nfs_stats) and with Debian's prometheus-node-exporter
(``--path.procfs``, collectors diskstats and mountstats only), both on free
loopback ports, and reports the median of repeated HTTP scrapes.

Run: ``.venv/bin/python benchmarks/procfs_bench.py`` (``make bench`` runs it
with every other benchmark). ``--quick`` runs fewer scrapes.
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gen_procfs_tree import generate
from helpers.server import free_port

PLUGINS = ("disk_stats", "disk_usage", "nfs_stats")
NODE_EXPORTER = "prometheus-node-exporter"


@dataclass
class Measured:
    median_ms: float
    p90_ms: float
    body_bytes: int
    series: int


def fetch(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from port {port}")
        return body
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exporter exited with {proc.returncode} before serving")
        try:
            fetch(port)
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.1)
    raise RuntimeError(f"nothing served /metrics on port {port} within {timeout:.0f}s")


@contextmanager
def running(cmd: Sequence[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc)
        yield
    except RuntimeError:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        sys.stderr.write(err.decode(errors="replace")[-2000:])
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summarize(times: list[float], body: bytes) -> Measured:
    times = sorted(times)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return Measured(statistics.median(times), times[int(0.9 * (len(times) - 1))], len(body), series)


def measure_interleaved(ports: dict[str, int], scrapes: int, warmup: int = 2) -> dict[str, Measured]:
    """Scrape every endpoint once per round, in a fresh random order each round.

    The machine is shared: load from elsewhere then hits every exporter
    alike instead of whichever happened to be measured at the time.
    """
    for _ in range(warmup):
        for port in ports.values():
            fetch(port)
    times: dict[str, list[float]] = {name: [] for name in ports}
    bodies: dict[str, bytes] = {}
    order = list(ports)
    rng = random.Random(0)
    for _ in range(scrapes):
        rng.shuffle(order)
        for name in order:
            started = time.perf_counter()
            bodies[name] = fetch(ports[name])
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: summarize(times[name], bodies[name]) for name in ports}


def ours_cmd(tree: Path, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("crusoe-metrics-exporter")
    return [
        str(exe), "serve", "--listen-address", "127.0.0.1", "--port", str(port),
        "--host-proc-path", str(tree), "--enable", ",".join(PLUGINS), "--log-level", "error",
    ]  # fmt: skip


def node_cmd(tree: Path, sysfs: Path, port: int) -> list[str]:
    return [
        NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", f"--path.procfs={tree}",
        f"--path.sysfs={sysfs}", "--collector.disable-defaults", "--collector.diskstats",
        "--collector.mountstats", "--log.level=error",
    ]  # fmt: skip


def bench_trees(trees: dict[int, Path], scrapes: int, with_node: bool) -> dict[str, Measured]:
    """Serve every tree with both exporters at once and measure them interleaved."""
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for mounts, tree in trees.items():
            port = free_port()
            stack.enter_context(running(ours_cmd(tree, port), port))
            ports[f"ours/{mounts}"] = port
            if with_node:
                sysfs = tree / "empty-sysfs"
                sysfs.mkdir(exist_ok=True)
                port = free_port()
                stack.enter_context(running(node_cmd(tree, sysfs, port), port))
                ports[f"node/{mounts}"] = port
        return measure_interleaved(ports, scrapes)


def breakdown(tree: Path, repeats: int = 5) -> dict[str, float]:
    """In-process split of one scrape: each plugin's collect, validation, exposition."""
    from crusoe_metrics_exporter.app import Exporter
    from crusoe_metrics_exporter.exposition import Scrape, render
    from crusoe_metrics_exporter.runner import validate
    from crusoe_metrics_exporter.textformat import LabelTexts

    ex = Exporter.from_environment(environ={"HOST_PROC_PATH": str(tree), "LOG_LEVEL": "error"})
    ex.start(only=list(PLUGINS))
    try:
        parts: dict[str, list[float]] = {}
        # Carried from scrape to scrape as the server does: after the first, only new label sets are written.
        texts = LabelTexts()

        def note(name: str, started: float) -> float:
            now = time.perf_counter()
            parts.setdefault(name, []).append((now - started) * 1000)
            return now

        for _ in range(repeats):
            scrape = Scrape()
            for rec in ex.records:
                if rec.name not in PLUGINS or rec.collector is None or rec.spec is None:
                    continue
                metrics = {m.name: m for m in rec.spec.metrics}
                t = time.perf_counter()
                samples = list(rec.collector.collect())
                t = note(f"{rec.name}: collect", t)
                grouped, _ = validate(samples, metrics)
                note("core: validate", t)
                scrape.groups.extend((spec, grouped[spec.name]) for spec in rec.spec.metrics if grouped.get(spec.name))
            t = time.perf_counter()
            render(scrape, texts=texts)
            note("core: render text", t)
        totals: dict[str, float] = {}
        for name, values in parts.items():
            # Several calls per scrape (validate per plugin): sum per scrape.
            per_scrape = len(values) // repeats
            sums = [sum(values[i * per_scrape : (i + 1) * per_scrape]) for i in range(repeats)]
            totals[name] = statistics.median(sums)
        return totals
    finally:
        ex.stop()


def per_mount_costs(points: dict[int, float]) -> dict[int, float]:
    """Milliseconds per NFS mount above the tree without NFS mounts."""
    base = points[0]
    return {m: (t - base) / m for m, t in points.items() if m > 0}


def linear_enough(points: dict[int, float]) -> tuple[bool, str]:
    """Linear growth keeps the cost per mount flat across sizes; quadratic
    growth would multiply it by the size ratio (4x from 64 to 256). Allow 1.5x
    for noise on a shared machine."""
    costs = per_mount_costs(points)
    ok = max(costs.values()) <= 1.5 * min(costs.values())
    text = ", ".join(f"{m}: {c:.3f}" for m, c in costs.items())
    return ok, f"ms per mount above the 0-mount tree: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--disks", type=int, default=64)
    ap.add_argument("--mounts", type=int, default=256)
    ap.add_argument("--nconnect", type=int, default=16)
    ap.add_argument("--scrapes", type=int, default=21, help="scrapes per exporter and size (median reported)")
    ap.add_argument("--sizes", default="0,64,128,256", help="mount counts for the linearity check")
    ap.add_argument("--scale", type=int, default=4,
                    help="also measure a tree this many times --mounts for the flat per-series check (1 = off)")
    ap.add_argument("--quick", action="store_true", help="7 scrapes per measurement")
    ap.add_argument("--keep", type=Path, help="generate the trees under this directory and keep them")
    args = ap.parse_args(argv)
    scrapes = 7 if args.quick else args.scrapes
    have_node = shutil.which(NODE_EXPORTER) is not None
    if not have_node:
        print(f"!!! {NODE_EXPORTER} not found: run scripts/setup-system.sh --test; comparison skipped !!!")

    base = args.keep or Path(tempfile.mkdtemp(prefix="procfs-bench-"))
    try:
        big = args.mounts * args.scale
        sizes = sorted({int(x) for x in args.sizes.split(",")} | {args.mounts, big})
        trees = {m: generate(base / f"m{m}", args.disks, m, args.nconnect) for m in sizes}
        measured = bench_trees(trees, scrapes, have_node)
        results = {m: (measured[f"ours/{m}"], measured.get(f"node/{m}")) for m in sizes}
        ours, node = results[args.mounts]
        print(f"procfs benchmark: {args.disks} disks, {args.mounts} NFS mounts x nconnect={args.nconnect}, "
              f"median of {scrapes} HTTP scrapes, interleaved")
        print(f"  crusoe-metrics-exporter ({'+'.join(PLUGINS)}): median {ours.median_ms:8.1f} ms  "
              f"p90 {ours.p90_ms:8.1f} ms  {ours.series} series  {ours.body_bytes / 1e6:.1f} MB")
        if node is not None:
            print(f"  node_exporter (diskstats+mountstats):          median {node.median_ms:8.1f} ms  "
                  f"p90 {node.p90_ms:8.1f} ms  {node.series} series  {node.body_bytes / 1e6:.1f} MB")
            ratio = ours.median_ms / node.median_ms
            verdict = "no slower" if ratio <= 1.0 else "SLOWER"
            print(f"  ratio ours/node_exporter: {ratio:.2f}  ({verdict} than node_exporter)")
            print(f"  per series: ours {1000 * ours.median_ms / ours.series:.2f} us, "
                  f"node_exporter {1000 * node.median_ms / node.series:.2f} us")
        print("linearity (median ms by NFS mount count; per series in us):")
        for mounts in sizes:
            o, n = results[mounts]
            extra = f"  node_exporter {n.median_ms:8.1f}  ratio {o.median_ms / n.median_ms:.2f}" if n else ""
            print(f"  {mounts:5d} mounts: ours {o.median_ms:8.1f} ({1000 * o.median_ms / o.series:.2f} us/series)"
                  f"{extra}")
        if big != args.mounts:
            # Issue targets: per-series cost flat from the default tree to 4x it (<= 1.1x), and at both
            # sizes at most a quarter of node_exporter's time.
            cost = {m: results[m][0].median_ms / results[m][0].series for m in (args.mounts, big)}
            growth = cost[big] / cost[args.mounts]
            print(f"  per-series cost at {big} / at {args.mounts} mounts: {growth:.2f} "
                  f"({'met' if growth <= 1.1 else 'NOT MET'}: target <= 1.1)")
            pairs = [(m, results[m]) for m in (args.mounts, big)]
            ratios = {m: o.median_ms / n.median_ms for m, (o, n) in pairs if n is not None}
            if ratios:
                verdict = "met" if max(ratios.values()) <= 0.25 else "NOT MET"
                print(f"  ratio to node_exporter at {' and '.join(f'{m} mounts {r:.2f}' for m, r in ratios.items())} "
                      f"({verdict}: target <= 0.25 at both)")
        if 0 in results and len([m for m in sizes if m > 0]) >= 2:
            ok, detail = linear_enough({m: results[m][0].median_ms for m in sizes})
            print(f"  ours linear: {'yes' if ok else 'NO'} ({detail})")
            if have_node:
                _, detail = linear_enough({m: n.median_ms for m, (_, n) in results.items() if n is not None})
                print(f"  node_exporter for comparison: {detail}")
        else:
            print("  linear: not checked (give --sizes with 0 and at least two mount counts)")
        print(f"where our time goes at {args.mounts} mounts (in-process, median ms per scrape):")
        for name, ms in breakdown(base / f"m{args.mounts}").items():
            print(f"  {name:46s} {ms:8.1f}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
