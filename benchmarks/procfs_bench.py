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
import itertools
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_procfs_tree import generate

PLUGINS = ("disk_stats", "disk_usage", "nfs_stats")
NODE_EXPORTER = "prometheus-node-exporter"


@dataclass
class Measured:
    median_ms: float
    p90_ms: float
    body_bytes: int
    series: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def measure(port: int, scrapes: int, warmup: int = 2) -> Measured:
    for _ in range(warmup):
        fetch(port)
    times = []
    body = b""
    for _ in range(scrapes):
        started = time.perf_counter()
        body = fetch(port)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return Measured(statistics.median(times), times[int(0.9 * (len(times) - 1))], len(body), series)


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


def bench_tree(tree: Path, scrapes: int, with_node: bool) -> tuple[Measured, Measured | None]:
    port = free_port()
    with running(ours_cmd(tree, port), port):
        ours = measure(port, scrapes)
    node = None
    if with_node:
        port = free_port()
        sysfs = tree / "empty-sysfs"
        sysfs.mkdir(exist_ok=True)
        with running(node_cmd(tree, sysfs, port), port):
            node = measure(port, scrapes)
    return ours, node


def breakdown(tree: Path, repeats: int = 5) -> dict[str, float]:
    """In-process split of one scrape: each plugin's collect, validation, exposition."""
    from procfs_render_prototype import render_text, same_series

    from crusoe_metrics_exporter.app import Exporter
    from crusoe_metrics_exporter.exposition import family, render
    from crusoe_metrics_exporter.runner import validate

    ex = Exporter.from_environment(environ={"HOST_PROC_PATH": str(tree), "LOG_LEVEL": "error"})
    ex.start(only=list(PLUGINS))
    try:
        parts: dict[str, list[float]] = {}

        def note(name: str, started: float) -> float:
            now = time.perf_counter()
            parts.setdefault(name, []).append((now - started) * 1000)
            return now

        for _ in range(repeats):
            families = []
            groups = []
            for rec in ex.records:
                if rec.name not in PLUGINS or rec.collector is None or rec.spec is None:
                    continue
                metrics = {m.name: m for m in rec.spec.metrics}
                t = time.perf_counter()
                samples = list(rec.collector.collect())
                t = note(f"{rec.name}: collect", t)
                grouped, _ = validate(samples, metrics)
                t = note("core: validate", t)
                for spec in rec.spec.metrics:
                    if grouped.get(spec.name):
                        families.append(family(spec, grouped[spec.name]))
                        groups.append((spec, grouped[spec.name]))
                note("core: build families", t)
            t = time.perf_counter()
            text = render(families)
            note("core: render text", t)
            t = time.perf_counter()
            direct = render_text(groups)
            note("proposal: direct text (replaces build+render)", t)
            if not same_series(text, direct):
                raise RuntimeError("the direct renderer disagrees with the core's exposition")
        totals: dict[str, float] = {}
        for name, values in parts.items():
            # Several calls per scrape (validate per plugin): sum per scrape.
            per_scrape = len(values) // repeats
            sums = [sum(values[i * per_scrape : (i + 1) * per_scrape]) for i in range(repeats)]
            totals[name] = statistics.median(sums)
        return totals
    finally:
        ex.stop()


def linear_enough(points: list[tuple[int, float]]) -> tuple[bool, str]:
    """Cost per added mount must stay flat: the slope between consecutive
    sizes may not grow by more than half (quadratic growth doubles it)."""
    slopes = [(t2 - t1) / (m2 - m1) for (m1, t1), (m2, t2) in itertools.pairwise(points)]
    ok = all(s2 <= 1.5 * s1 for s1, s2 in itertools.pairwise(slopes)) and all(s > 0 for s in slopes)
    text = ", ".join(f"{s:.3f}" for s in slopes)
    return ok, f"ms per added mount between sizes: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--disks", type=int, default=64)
    ap.add_argument("--mounts", type=int, default=256)
    ap.add_argument("--nconnect", type=int, default=16)
    ap.add_argument("--scrapes", type=int, default=21, help="scrapes per exporter and size (median reported)")
    ap.add_argument("--sizes", default="64,128,256", help="mount counts for the linearity check")
    ap.add_argument("--quick", action="store_true", help="7 scrapes per measurement")
    ap.add_argument("--keep", type=Path, help="generate the trees under this directory and keep them")
    args = ap.parse_args(argv)
    scrapes = 7 if args.quick else args.scrapes
    have_node = shutil.which(NODE_EXPORTER) is not None
    if not have_node:
        print(f"!!! {NODE_EXPORTER} not found: run scripts/setup-system.sh --test; comparison skipped !!!")

    base = args.keep or Path(tempfile.mkdtemp(prefix="procfs-bench-"))
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",")} | {args.mounts})
        results: dict[int, tuple[Measured, Measured | None]] = {}
        for mounts in sizes:
            tree = generate(base / f"m{mounts}", args.disks, mounts, args.nconnect)
            results[mounts] = bench_tree(tree, scrapes, have_node)
        ours, node = results[args.mounts]
        print(f"procfs benchmark: {args.disks} disks, {args.mounts} NFS mounts x nconnect={args.nconnect}, "
              f"median of {scrapes} HTTP scrapes")
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
        print("linearity (median ms by NFS mount count):")
        for mounts in sizes:
            o, n = results[mounts]
            extra = f"  node_exporter {n.median_ms:8.1f}  ratio {o.median_ms / n.median_ms:.2f}" if n else ""
            print(f"  {mounts:5d} mounts: ours {o.median_ms:8.1f}{extra}")
        if len(sizes) >= 3:
            ok, detail = linear_enough([(m, results[m][0].median_ms) for m in sizes])
            print(f"  linear: {'yes' if ok else 'NO'} ({detail})")
        else:
            print("  linear: not checked (give at least three --sizes)")
        print(f"where our time goes at {args.mounts} mounts (in-process, median ms per scrape):")
        for name, ms in breakdown(base / f"m{args.mounts}").items():
            print(f"  {name:46s} {ms:8.1f}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
