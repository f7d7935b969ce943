"""A host with 10,000 NFS mounts against a real exporter in a 256 MiB memory cgroup.

The trial: 10,000 plain NFS mounts gave 330k series and the exporter was
OOM-killed at the fifth scrape. The series limit keeps nfs_stats at 160k
(the default, which fits 1,000 mounts with nconnect=16), counted and shown
as degraded; the exporter stays up and well under the limit.

The five-minute soak (1,000 nconnect=16 mounts, 10 scrapers every second)
is benchmarks/soak_bench.py; its figures are in docs/robustness.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cgroup_exporter import exporter_in_cgroup

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cgroup, pytest.mark.slow]


def test_ten_thousand_nfs_mounts_are_kept_to_the_series_limit_within_256_mib(tmp_path: Path) -> None:
    tree = tmp_path / "proc"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gen_procfs_tree.py"), "--disks", "8", "--mounts",
                    "10000", "--nconnect", "1", str(tree)], check=True, capture_output=True)
    env = {"HOST_PROC_PATH": str(tree), "MALLOC_ARENA_MAX": "2"}
    with exporter_in_cgroup(["--enable", "nfs_stats,disk_stats,disk_usage"], env) as running:
        running.wait_ready()
        for _ in range(6):
            status, text, _ = running.get("/metrics", timeout=30)
            assert status == 200
            running.alive()
        peak = running.peak_rss()
        cgroup_peak = running.cgroup.peak_bytes()
        log = running.log()
    kept = len(re.findall(r"^crusoe_vm_nfs_[a-z_]+\{", text, re.M))
    dropped = re.search(r'^crusoe_vm_exporter_plugin_invalid_samples_total\{plugin="nfs_stats",'
                        r'reason="series_limit"\} (\S+)$', text, re.M)
    assert kept == 160_000
    # 10,000 mounts are ~330k series (the trial's count): the rest of every scrape is counted, not kept.
    assert dropped is not None and float(dropped.group(1)) >= 6 * 150_000
    assert 'crusoe_vm_exporter_plugin_state{plugin="nfs_stats",state="degraded"} 1.0' in text
    assert "Traceback" not in log
    total = 160_000 + float(dropped.group(1)) / 6
    print(f"10,000 NFS mounts: 160k of {total:.0f} series kept, peak RSS {peak / 2**20:.0f} MiB, cgroup peak "
          f"{cgroup_peak / 2**20:.0f} MiB")
