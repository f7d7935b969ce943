"""disk_latency benchmark: per-event cost, fio IOPS with/without, start-up time, exporter RSS.

Needs root, bcc, fio and losetup. Every figure is printed beside a baseline
measured in the same run:

* per-event cost: run_time_ns / run_cnt of our programs (kernel.bpf_stats_enabled)
  next to an empty program attached to the same tracepoints at the same time;
* fio 4k random-write IOPS on a loop device, rounds alternating without and
  with the plugin's programs attached;
* start-up (compile in the helper + attach) time, and the resident memory of
  an exporter process running only disk_latency, after scrapes under load.

``--quick`` shortens the fio rounds (for smoke runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.ebpf import BpfSpec, LoadedBpf, ProgramSpec, Tracepoint, load
from crusoe_metrics_exporter.ebpf.kernel import set_bpf_stats
from crusoe_metrics_exporter.plugins.disk_latency.collector import DiskLatencyCollector, bpf_spec

EMPTY = BpfSpec(
    "empty_baseline",
    "int empty_issue(void *ctx) { return 0; }\nint empty_complete(void *ctx) { return 0; }\n",
    programs=(
        ProgramSpec("issue", (Tracepoint("block", "block_rq_issue", "empty_issue"),)),
        ProgramSpec("complete", (Tracepoint("block", "block_rq_complete", "empty_complete"),)),
    ),
)

RSS_CHILD = r"""
import os, subprocess, sys, time
from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import render
dev, state = sys.argv[1], sys.argv[2]
ex = Exporter.from_environment(environ={"CRUSOE_EXPORTER_STATE_DIR": state})
ex.settings.plugins.setdefault("disk_latency", {})["device_include"] = "^" + os.path.basename(dev) + "$"
ex.settings.plugins["disk_latency"]["ebpf_state_dir"] = state
ex.start(only=["disk_latency"])
rec = next(r for r in ex.records if r.name == "disk_latency")
assert rec.state == "active", rec.reason
fio = subprocess.Popen(["fio", "--name=rss", "--filename=" + dev, "--rw=randrw", "--bs=4k", "--direct=1",
                        "--ioengine=libaio", "--iodepth=8", "--runtime=4", "--time_based", "--output=/dev/null"])
for _ in range(20):
    render(ex.collect())
    time.sleep(0.2)
fio.wait()
for _ in range(5):
    render(ex.collect())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024, "bcc" in sys.modules)
ex.stop()
"""


def fio_iops(device: str, seconds: float) -> float:
    out = subprocess.run(
        [
            "fio", "--name=bench", f"--filename={device}", "--rw=randwrite", "--bs=4k", "--direct=1",
            "--ioengine=libaio", "--iodepth=16", f"--runtime={seconds}", "--time_based", "--output-format=json",
            "--randrepeat=0", "--norandommap",
        ],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(json.loads(out[out.index("{"):])["jobs"][0]["write"]["iops"])


class Plugin:
    """disk_latency started the way the exporter starts it (so its disk owns a stats slot)."""

    def __init__(self, device: str, state: Path) -> None:
        self.exporter = Exporter.from_environment(environ={})
        options = self.exporter.settings.plugins.setdefault("disk_latency", {})
        options["device_include"] = f"^{os.path.basename(device)}$"
        options["ebpf_state_dir"] = str(state)
        self.exporter.start(only=["disk_latency"])
        rec = next(r for r in self.exporter.records if r.name == "disk_latency")
        if not isinstance(rec.collector, DiskLatencyCollector) or rec.collector.loaded is None:
            raise SystemExit(f"disk_latency did not start: {rec.state}: {rec.reason}")
        self.loaded: LoadedBpf = rec.collector.loaded

    def close(self) -> None:
        self.exporter.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short fio rounds")
    parser.add_argument("--rounds", type=int, default=0, help="fio rounds per side (default 4, quick 2)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("disk_latency benchmark: needs root (eBPF); skipped")
        return 0
    for tool in ("fio", "losetup"):
        if shutil.which(tool) is None:
            print(f"disk_latency benchmark: {tool} is not installed (scripts/setup-system.sh --test); skipped")
            return 0
    rounds = args.rounds or (3 if args.quick else 8)
    seconds = 2 if args.quick else 3
    state = Path(tempfile.mkdtemp(prefix="cme-bench-state-"))
    work = Path(tempfile.mkdtemp(prefix="cme-bench-", dir="/var/tmp"))
    backing = work / "disk.img"
    # Written out, not sparse: first writes into holes allocate blocks in the
    # backing file and would make the earliest rounds slower than the rest.
    subprocess.run(["dd", "if=/dev/zero", f"of={backing}", "bs=1M", "count=128", "status=none"], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()
    stats_before = set_bpf_stats(True)
    try:
        # Start-up: compile in the helper + attach, three times (the first
        # also builds the merged header tree when needed).
        startup = []
        for _ in range(3):
            t0 = time.monotonic()
            loaded = load(bpf_spec(), state)
            startup.append(time.monotonic() - t0)
            loaded.close()
        print(f"start-up (compile + load + attach): median {statistics.median(startup):.2f} s "
              f"(runs: {', '.join(f'{s:.2f}' for s in startup)}; target < 2 s)")

        # Per-event cost, ours beside an empty program on the same tracepoints.
        ours, empty = Plugin(device, state), load(EMPTY, state)
        try:
            fio_iops(device, seconds)
            o, e = ours.loaded.stats(), empty.stats()
        finally:
            ours.close()
            empty.close()
        per_event = {}
        for role in ("issue", "complete"):
            per_event[role] = (o[role].run_time_ns / max(o[role].run_cnt, 1),
                               e[role].run_time_ns / max(e[role].run_cnt, 1))
            print(f"per-event cost {role:8s}: ours {per_event[role][0]:7.1f} ns, empty {per_event[role][1]:7.1f} ns "
                  f"({o[role].run_cnt} / {e[role].run_cnt} runs)")
        ours_total = sum(v[0] for v in per_event.values())
        empty_total = sum(v[1] for v in per_event.values())
        print(f"per-event cost ratio (issue+complete, ours/empty): {ours_total / empty_total:.2f}x "
              f"({ours_total:.0f} ns vs {empty_total:.0f} ns per I/O; target <= 2.5x)")

        # fio IOPS, alternating rounds without and with the programs, after
        # an untimed warm-up round.
        fio_iops(device, seconds)
        without, with_ = [], []
        for _ in range(rounds):
            without.append(fio_iops(device, seconds))
            plugin = Plugin(device, state)
            try:
                with_.append(fio_iops(device, seconds))
            finally:
                plugin.close()
        # The machine is shared, so throughput drifts between rounds: compare
        # each round with its neighbour and report the median of those ratios.
        pair_ratios = [w / o for w, o in zip(with_, without, strict=True)]
        print(f"fio 4k randwrite IOPS (iodepth 16, {rounds} alternating {seconds} s rounds): "
              f"without median {statistics.median(without):.0f}, with median {statistics.median(with_):.0f}; "
              f"ratio with/without median of pairs {statistics.median(pair_ratios):.3f} "
              f"(pairs: {', '.join(f'{r:.3f}' for r in pair_ratios)}; target >= 0.98)")
    finally:
        set_bpf_stats(stats_before)

    try:
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, device, str(state)], capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()
        rss, hwm, bcc_loaded = int(out[0]), int(out[1]), out[2] == "True"
        print(f"exporter RSS with disk_latency active, after 25 scrapes under fio: {rss / 2**20:.1f} MiB "
              f"(peak {hwm / 2**20:.1f} MiB; bcc in process: {bcc_loaded}; target < 50 MB)")
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
