"""Per-RPC cost of nfs_latency's RPC-layer program (needs a kernel with an NFS client: the test guest).

Per-event cost from the kernel's own accounting (BPF_ENABLE_STATS, run_time_ns
/ run_cnt per program), beside an empty program on the same two tracepoints
(sunrpc:rpc_stats_latency and sunrpc:rpc_task_end, the two that fire for
every RPC), attached at the same time so both see the same RPCs. Both attach
orders are measured and averaged (the first program on a tracepoint pays for
cold caches). The RPCs are real NFS traffic to the guest's own nfsd: lookups
of missing names (LOOKUP) and small direct reads (READ), NFSv3 and NFSv4.2.

Under software emulation (TCG) absolute nanoseconds mean little; the ratio to
the empty program is the figure to read.

    python -m tests.vm run -- python benchmarks/nfs_rpc_bench.py [--quick]

On a kernel without the sunrpc tracepoints it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ebpf_cost import empty_spec

from crusoe_metrics_exporter.ebpf import LoadedBpf, kernel, load
from crusoe_metrics_exporter.plugins.nfs_latency.rpc_source import build_spec, rpc_layer_available

HOT = {"rpc_stats": "rpc_stats_latency", "rpc_errors": "rpc_task_end"}
#: The same attach kind as the plugin's programs (classic tracepoints, docs/ebpf.md).
EMPTY = empty_spec("tracepoint", [(role, "sunrpc", event) for role, event in HOT.items()])


def stats(loaded: LoadedBpf) -> dict[str, tuple[int, int]]:
    return {role: (s.run_time_ns, s.run_cnt) for role, s in loaded.stats().items() if role in HOT}


def workload(paths: list[Path], rpcs: int) -> None:
    """About ``rpcs`` RPCs spread over the mounts: LOOKUPs of missing names and 4 KiB direct READs."""
    per_mount = rpcs // (2 * len(paths))
    for path in paths:
        data = path / "bench-data"
        if not data.exists():
            data.write_bytes(b"x" * 4096)
        for i in range(per_mount):
            with contextlib.suppress(FileNotFoundError):
                os.stat(path / f"bench-missing-{time.monotonic_ns()}-{i}")
        fd = os.open(data, os.O_RDONLY | os.O_DIRECT)
        aligned = mmap.mmap(-1, 4096)  # O_DIRECT wants an aligned buffer
        try:
            for _ in range(per_mount):
                os.preadv(fd, [aligned], 0)
        finally:
            os.close(fd)
            aligned.close()


def busy_ns() -> int:
    """CPU time spent not idle, all CPUs, from /proc/stat (USER_HZ ticks)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def measure(order: tuple[str, str], paths: list[Path], rpcs: int) -> dict[str, dict[str, float]]:
    programs: dict[str, LoadedBpf] = {}
    try:
        for name in order:
            programs[name] = load(EMPTY) if name == "empty" else load(build_spec("nfs_latency", 1024))
        with kernel.run_stats():
            before = {n: stats(p) for n, p in programs.items()}
            busy = busy_ns()
            workload(paths, rpcs)
            busy = busy_ns() - busy
            after = {n: stats(p) for n, p in programs.items()}
        out: dict[str, dict[str, float]] = {}
        for n in programs:
            out[n] = {}
            for role in HOT:
                ns = after[n][role][0] - before[n][role][0]
                cnt = after[n][role][1] - before[n][role][1]
                out[n][role] = ns / max(1, cnt)
                out[n][f"{role}_count"] = cnt
            out[n]["share"] = sum(after[n][r][0] - before[n][r][0] for r in HOT) / max(1, busy)
        return out
    finally:
        for p in programs.values():
            p.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer RPCs and rounds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("nfs_rpc_bench: needs root")
        return 1
    from helpers.guest_nfs import NfsServer, mount_at, unmount

    server = NfsServer()
    try:
        server.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"nfs_rpc_bench: skipped: no NFS server here ({str(exc)[:120]}); run it in the test guest: "
              "python -m tests.vm run -- python benchmarks/nfs_rpc_bench.py")
        return 0
    mounts = []
    for version in ("3", "4.2"):
        export = server.add_volume_fs()
        server.write_exports()
        mounts.append(mount_at(server, export, version, Path(f"/mnt/bench-v{version}")))
    if not rpc_layer_available():
        print("nfs_rpc_bench: skipped: no sunrpc:rpc_stats_latency on this kernel")
        return 0
    rpcs = 1000 if args.quick else 4000
    rounds = 1 if args.quick else 3
    runs = []
    try:
        workload([m.mountpoint for m in mounts], 200)  # warm up: files exist, caches hot
        for _ in range(rounds):
            for order in (("empty", "nfs_latency"), ("nfs_latency", "empty")):
                runs.append(measure(order, [m.mountpoint for m in mounts], rpcs))
    finally:
        for m in mounts:
            unmount(m)
    mean = {n: {k: statistics.mean(r[n][k] for r in runs) for k in runs[0][n]} for n in ("empty", "nfs_latency")}
    print(f"per-RPC cost on kernel {os.uname().release}, ~{rpcs} NFS RPCs per run (LOOKUP + READ, NFSv3 and "
          f"v4.2), mean of {len(runs)} runs over both attach orders (ns/event; TCG: read the ratios):")
    print(f"  {'tracepoint':28} {'events':>8} {'empty':>9} {'nfs_latency':>12} {'ratio':>7}")
    for role, event in HOT.items():
        e, o = mean["empty"][role], mean["nfs_latency"][role]
        print(f"  sunrpc:{event:21} {mean['nfs_latency'][f'{role}_count']:8.0f} {e:9.1f} {o:12.1f} {o / e:7.2f}")
    e = sum(mean["empty"][r] for r in HOT)
    o = sum(mean["nfs_latency"][r] for r in HOT)
    print(f"  per RPC (both programs)               {e:9.1f} {o:12.1f} {o / e:7.2f}")
    print(f"  share of the CPU time busy during the workload: nfs_latency {100 * mean['nfs_latency']['share']:.2f} %, "
          f"empty {100 * mean['empty']['share']:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
