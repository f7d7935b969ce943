"""Cost of the nfs_latency and objstore eBPF programs (``make bench``; needs root).

1. Per-event cost, from the kernel's own accounting (run_time_ns / run_cnt
   per program while BPF_ENABLE_STATS is held; see ebpf_cost.py). Empty
   programs of each attach kind on the same tracepoints run at the same
   time, so all see the same events; the figures are ratios to the empty
   program of the kind the plugins use here (tp_btf where the kernel has
   BTF) and to the empty perf-event tracepoint program. Loopback ping-pong
   traffic is generated (a) to a port nobody watches, (b) to a watched port
   but an address nobody watches, (c) to a watched address and port. In (c)
   only the client's half of the events match (the server's replies go to
   an ephemeral port), so the matching cost is derived as
   2 * mean(c) - mean(a).
   Targets: non-matching <= 1.3x the empty program, matching <= 3x.

2. Loopback request/response rate (64-byte ping-pong between two processes)
   with both plugins attached and filtering another address on the same
   port, and detached, alternating runs. Detached is checked: the programs'
   run counts must stand still, or the benchmark fails. Target: ratio >= 0.97.

    .venv/bin/python benchmarks/tcp_filter_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys

from ebpf_cost import EMPTY_KINDS, detached_run, empty_spec, reaches

from crusoe_metrics_exporter.ebpf import LoadedBpf, kernel, load
from crusoe_metrics_exporter.ebpf.service import EbpfService
from crusoe_metrics_exporter.plugins._tcptrace.program import HOOKS
from crusoe_metrics_exporter.plugins._tcptrace.tracer import TcpTracer, make_spec
from crusoe_metrics_exporter.plugins.nfs_latency import collector as nfs_collector
from crusoe_metrics_exporter.plugins.nfs_latency import parser as nfs_parser
from crusoe_metrics_exporter.plugins.objstore import collector as obj_collector
from crusoe_metrics_exporter.plugins.objstore import parser as obj_parser

TRACEPOINTS = tuple((h.role, h.tracepoints[-1].category, h.tracepoints[-1].event) for h in HOOKS)
HOT = ("send", "recv")
PLUGINS = ("nfs_latency", "objstore")
#: Targets (issue 11), as ratios to an empty program of the kind we use.
TARGET_NON_MATCHING = 1.3
TARGET_MATCHING = 3.0
OTHER_ADDRESS = "198.51.100.7"  # TEST-NET-2: never reached, only filtered for

PINGPONG = r"""
import os, socket, sys, time
mode, host, port, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
# Client and server share one CPU: without pinning, runs flip between
# same-CPU and cross-CPU wake-ups and the rate between two modes 4x apart.
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d: break
        c.sendall(d)
else:
    c = socket.create_connection((host, port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"p" * 64; n = 0
    if arg >= 1000:
        for _ in range(int(arg)):
            c.sendall(msg); c.recv(64)
        n = int(arg); el = 0.0
    else:
        end = time.perf_counter() + arg; t0 = time.perf_counter()
        while time.perf_counter() < end:
            c.sendall(msg); c.recv(64); n += 1
        el = time.perf_counter() - t0
    print(n, el, flush=True)
"""


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pingpong(host: str, port: int, amount: float) -> tuple[int, float]:
    """Run a ping-pong; ``amount`` >= 1000 is a round-trip count, else seconds. Returns (trips, seconds)."""
    server = subprocess.Popen([sys.executable, "-c", PINGPONG, "server", host, str(port), "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = subprocess.run([sys.executable, "-c", PINGPONG, "client", host, str(port), str(amount)],
                             capture_output=True, text=True, check=True, timeout=600).stdout.split()
        return int(out[0]), float(out[1])
    finally:
        server.wait(timeout=10)


def load_plugin(name: str, port: int, address: str) -> TcpTracer:
    if name == "nfs_latency":
        body, bounds = nfs_collector.SOURCE.read_text(), nfs_parser.BUCKETS
        defines = {"NFS_MAX_INFLIGHT": 16384, "NFS_CLAMP_NS": 60 * 10**9, "NFS_BUCKETS": nfs_parser.SLOTS}
    else:
        body, bounds = obj_collector.SOURCE.read_text(), obj_parser.BUCKETS
        defines = {"OBJ_MAX_INFLIGHT": 65536, "OBJ_CLAMP_NS": 600 * 10**9, "OBJ_BUCKETS": obj_parser.SLOTS}
    spec = make_spec(name, body, bounds, defines=defines, max_targets=64)
    # The eBPF runtime service on its own, without the exporter around it.
    tracer = TcpTracer.load(EbpfService(), name, spec, 64)
    tracer.set_targets([address], [port])
    return tracer


def hot_stats(loaded: LoadedBpf) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the send and receive programs together."""
    stats = loaded.stats()
    return (sum(stats[r].run_time_ns for r in HOT if r in stats), sum(stats[r].run_cnt for r in HOT if r in stats))


def method_of(loaded: LoadedBpf) -> str:
    return {p.role: p.method for p in loaded.programs}["send"]


def measure_order(
    order: tuple[str, ...], trips: int, watched_port: int, other_port: int
) -> tuple[str, dict[str, dict[str, float]]]:
    """Attach the programs in ``order`` (= run order on each tracepoint) and measure every case.

    Returns the plugins' attach method and, per case, ns/event per program.
    """
    programs: dict[str, LoadedBpf] = {}
    try:
        for name in order:
            if name in PLUGINS:
                programs[name] = load_plugin(name, watched_port, "127.0.0.1").loaded
            else:
                programs[name] = load(empty_spec(name, TRACEPOINTS))
        cases = (
            ("non-matching port", "127.0.0.1", other_port),
            ("watched port, other address", "127.0.0.2", watched_port),
            ("matching (client half)", "127.0.0.1", watched_port),
        )
        results: dict[str, dict[str, float]] = {}
        with kernel.run_stats():
            for label, host, port in cases:
                before = {n: hot_stats(p) for n, p in programs.items()}
                pingpong(host, port, trips)
                after = {n: hot_stats(p) for n, p in programs.items()}
                results[label] = {
                    n: (after[n][0] - before[n][0]) / max(1, after[n][1] - before[n][1]) for n in programs
                }
        return method_of(programs[PLUGINS[0]]), results
    finally:
        for p in programs.values():
            p.close()


def per_event(trips: int) -> None:
    watched_port = free_port("127.0.0.1")
    other_port = free_port("127.0.0.1")
    # The first program on a tracepoint, and the first to read the socket,
    # pays for cold caches (~25-60 ns here): the attach order is rotated so
    # that each program takes each position once.
    names = (*PLUGINS, *EMPTY_KINDS)
    orders = [names[i:] + names[:i] for i in range(len(names))]
    measured = [measure_order(order, trips, watched_port, other_port) for order in orders]
    method = measured[0][0]
    runs = [r for _, r in measured]
    results = {case: {n: statistics.mean(r[case][n] for r in runs) for n in names} for case in runs[0]}
    print(f"per-event cost, send+recv, plugins attached as {method}, {trips} loopback round trips per case,")
    print(f"mean over {len(orders)} attach orders (ns/event; ratios to the empty {method} program and to the")
    print("empty perf-event tracepoint program):")
    empties = "".join(f" {k:>15}" for k in EMPTY_KINDS)
    print(f"  {'case':30}{empties} {'nfs':>7} {'objstore':>8} {'nfs/same':>8} {'obj/same':>8} {'nfs/perf':>8} "
          f"{'obj/perf':>8}")
    for label, r in results.items():
        cells = "".join(f" {r[k]:15.1f}" for k in EMPTY_KINDS)
        print(f"  {label:30}{cells} {r['nfs_latency']:7.1f} {r['objstore']:8.1f} "
              f"{r['nfs_latency'] / r[method]:8.2f} {r['objstore'] / r[method]:8.2f} "
              f"{r['nfs_latency'] / r['tracepoint']:8.2f} {r['objstore'] / r['tracepoint']:8.2f}")
    nonmatch = results["non-matching port"]
    match = results["matching (client half)"]
    print("  matching events alone (2 * client-half case - non-matching):")
    for n in PLUGINS:
        derived = 2 * match[n] - nonmatch[n]
        print(f"    {n:12} {derived:8.1f} ns/event = {derived / match[method]:.2f}x empty {method} "
              f"(target <= {TARGET_MATCHING}x), {derived / match['tracepoint']:.2f}x empty perf-event")
    for n in PLUGINS:
        worst = max(results[c][n] / results[c][method] for c in ("non-matching port", "watched port, other address"))
        print(f"    {n:12} non-matching, worst case {worst:.2f}x empty {method} (target <= {TARGET_NON_MATCHING}x)")


def rate(seconds: float, rounds: int) -> None:
    port = free_port("127.0.0.1")
    tracers = [load_plugin(name, port, OTHER_ADDRESS) for name in PLUGINS]
    loaded = [t.loaded for t in tracers]
    attached_rates: list[float] = []
    detached_rates: list[float] = []

    def run() -> float:
        trips, elapsed = pingpong("127.0.0.1", port, seconds)
        return trips / elapsed

    try:
        reaches(loaded, run)
        for i in range(rounds):
            # Alternate which mode goes first, so drift in the machine's load
            # does not favour one of them.
            if i % 2 == 0:
                detached_rates.append(detached_run(loaded, run))
                attached_rates.append(run())
            else:
                attached_rates.append(run())
                detached_rates.append(detached_run(loaded, run))
    finally:
        for t in tracers:
            t.loaded.close()
    on, off = statistics.median(attached_rates), statistics.median(detached_rates)
    paired = statistics.median(a / b for a, b in zip(attached_rates, detached_rates, strict=True))
    print(f"loopback 64-byte request/response, {rounds} alternating pairs of {seconds:g}s runs:")
    print(f"  detached (run counts checked to stand still): median {off:,.0f} round trips/s  "
          f"runs {[round(r) for r in detached_rates]}")
    print(f"  attached (both plugins, filtering {OTHER_ADDRESS} on the same port): median {on:,.0f}  "
          f"runs {[round(r) for r in attached_rates]}")
    print(f"  ratio attached/detached: medians {on / off:.3f}, median of pairs {paired:.3f} (target >= 0.97)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (CI smoke)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("tcp_filter_bench: needs root (eBPF); skipped")
        return 0
    per_event(20_000 if args.quick else 100_000)
    rate(0.5 if args.quick else 1.0, 4 if args.quick else 12)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
