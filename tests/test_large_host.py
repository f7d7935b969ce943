"""A host with 10,000 NFS mounts against a real exporter in a 256 MiB memory cgroup.

The trial: 10,000 plain NFS mounts gave 330k series and the exporter was
OOM-killed at the fifth scrape. The series limit keeps nfs_stats at 160k
(the default, which fits 1,000 mounts with nconnect=16), counted and shown
as degraded; the exporter stays up and well under the limit.

The five-minute soak (1,000 nconnect=16 mounts, 10 scrapers every second)
is benchmarks/soak_bench.py; its figures are in docs/robustness.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.cgroup import cgroup_unavailable, memory_cgroup
from helpers.processes import stop
from helpers.server import CLI, free_port

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 256 * 1024 * 1024

pytestmark = [pytest.mark.cgroup, pytest.mark.slow]


def test_ten_thousand_nfs_mounts_are_kept_to_the_series_limit_within_256_mib(tmp_path: Path) -> None:
    reason = cgroup_unavailable()
    if reason:
        pytest.skip(reason)
    tree = tmp_path / "proc"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gen_procfs_tree.py"), "--disks", "8", "--mounts",
                    "10000", "--nconnect", "1", str(tree)], check=True, capture_output=True)
    port = free_port()
    env = {**os.environ, "HOST_PROC_PATH": str(tree), "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1",
           "MALLOC_ARENA_MAX": "2"}
    with memory_cgroup(MEMORY_LIMIT) as cgroup, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cgroup.wrap([CLI, "serve", "--enable", "nfs_stats,disk_stats,disk_usage"]), env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            for _ in range(6):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                    text = resp.read().decode()
                assert proc.poll() is None, "the exporter died"
                assert cgroup.oom_kills() == 0
            kept = len(re.findall(r"^crusoe_vm_nfs_[a-z_]+\{", text, re.M))
            dropped = re.search(r'^crusoe_vm_exporter_plugin_invalid_samples_total\{plugin="nfs_stats",'
                                r'reason="series_limit"\} (\S+)$', text, re.M)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]
            cgroup_peak = cgroup.peak_bytes()
        finally:
            stop(proc)
        stderr.seek(0)
        log = stderr.read().decode()
    assert kept == 160_000
    # 10,000 mounts are ~330k series (the trial's count): the rest of every scrape is counted, not kept.
    assert dropped is not None and float(dropped.group(1)) >= 6 * 150_000
    assert 'crusoe_vm_exporter_plugin_state{plugin="nfs_stats",state="degraded"} 1.0' in text
    assert "Traceback" not in log
    total = 160_000 + float(dropped.group(1)) / 6
    print(f"10,000 NFS mounts: 160k of {total:.0f} series kept, peak RSS {peak / 2**20:.0f} MiB, cgroup peak "
          f"{cgroup_peak / 2**20:.0f} MiB")
