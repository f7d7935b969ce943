"""The Go exporter's host-health families (seed §3.11-§3.15), checked in one `collect` run.

Used on this machine (tests/test_seed_families.py) and in the QEMU guest
(tests/test_seed_families_guest.py): ``crusoe-metrics-exporter collect`` must
print every family, and its counters must lie between the kernel files read
just before and just after it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

P = "crusoe_vm_"
#: §3.11 memory pressure, §3.12 I/O pressure, §3.13 CPU steal, §3.15 soft lockups (+ PSI cpu).
FAMILIES = {
    "psi": ["psi_memory_ratio", "psi_memory_stall_seconds_total", "psi_io_ratio", "psi_io_stall_seconds_total",
            "psi_cpu_ratio", "psi_cpu_stall_seconds_total", "psi_collection_errors_total"],
    "meminfo": ["mem_available_bytes", "swap_used_bytes", "mem_collection_errors_total"],
    "procstat": ["cpu_steal_seconds_total", "procs_running", "procs_blocked", "cpu_steal_collection_errors_total",
                 "io_collection_errors_total"],
    "kernel_lockups": ["kernel_soft_lockups_total", "kernel_soft_lockup_collection_errors_total"],
}
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def pressure_totals(resource: str) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/pressure/{resource}").read_text().splitlines():
        scope, *pairs = line.split()
        out[scope] = int(dict(p.split("=") for p in pairs)["total"]) / 1e6
    return out


def steal_seconds() -> float:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / os.sysconf("SC_CLK_TCK")


def collect_and_check(cli: str) -> Series:
    """Run `collect` for the four plugins; assert every family is there and counters are bracketed."""
    before = {r: pressure_totals(r) for r in ("cpu", "memory", "io")}
    steal_before = steal_seconds()
    args = [cli, "collect"]
    for plugin in FAMILIES:
        args += ["--plugin", plugin]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    after = {r: pressure_totals(r) for r in ("cpu", "memory", "io")}
    steal_after = steal_seconds()
    series: Series = {}
    for family in text_string_to_metric_families(proc.stdout):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    names = {name for name, _ in series}
    missing = [P + n for plugin in FAMILIES for n in FAMILIES[plugin] if P + n not in names]
    assert not missing, f"collect printed no {missing}:\n{proc.stderr}"
    for resource in ("cpu", "memory", "io"):
        for scope, low in before[resource].items():
            ours = series[(f"{P}psi_{resource}_stall_seconds_total", frozenset({("scope", scope)}))]
            assert low <= ours <= after[resource][scope], (resource, scope)
    assert steal_before <= series[(P + "cpu_steal_seconds_total", frozenset())] <= steal_after
    for errors in ("psi_collection_errors_total", "mem_collection_errors_total", "cpu_steal_collection_errors_total",
                   "io_collection_errors_total", "kernel_soft_lockup_collection_errors_total"):
        assert series[(P + errors, frozenset())] == 0, errors
    kinds = {dict(labels)["kind"]: v for (name, labels), v in series.items() if name == P + "kernel_soft_lockups_total"}
    assert kinds == {"soft_lockup": 0, "hard_lockup": 0, "hung_task": 0, "rcu_stall": 0}
    return series
