"""psi on the Go exporter's fixtures (exact values) and on this machine's real /proc/pressure."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from helpers.node_exporter import node_exporter_series

from crusoe_metrics_exporter.plugins.psi import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.psi.collector import PsiCollector
from crusoe_metrics_exporter.plugins.psi.parser import parse_pressure
from crusoe_metrics_exporter.sdk import NoOptions, PluginSpec, Sample
from crusoe_metrics_exporter.testing import PluginHarness, error_totals

DATA = Path(__file__).parent / "data"
SPEC: PluginSpec[NoOptions] = crusoe_metrics_exporter_plugin()
ERRORS = "psi_collection_errors_total"


def tree(tmp_path: Path, memory: str, cpu: str = "psi_all_zero.txt", io: str = "psi_all_zero.txt") -> Path:
    pressure = tmp_path / "pressure"
    pressure.mkdir(parents=True)
    for resource, name in (("cpu", cpu), ("memory", memory), ("io", io)):
        shutil.copy(DATA / name, pressure / resource)
    return tmp_path


def collect(proc: Path) -> tuple[dict[tuple[str, tuple[str, ...]], float], int]:
    ctx = PluginHarness(SPEC, host_proc=proc).context
    collector = PsiCollector(ctx)
    collector.start()
    samples = list(collector.collect())
    assert all(isinstance(s, Sample) for s in samples)
    values = {(s.metric, s.labels): float(s.value) for s in samples}  # type: ignore[arg-type]
    assert len(values) == len(samples), "no series twice"
    return values, error_totals(ctx)[ERRORS]


def test_wellformed() -> None:
    result = parse_pressure((DATA / "psi_wellformed.txt").read_bytes())
    assert result.errors == 0
    some, full = result.scopes["some"], result.scopes["full"]
    assert some.ratios == (0.0, 0.1234, 0.085)
    assert some.stall_seconds == 12.345678
    assert full.ratios == (0.0111, 0.051, 0.032)
    assert full.stall_seconds == 0.456789


def test_memory_present_gives_six_ratios_and_two_stall_counters(tmp_path: Path) -> None:
    values, errors = collect(tree(tmp_path, memory="psi_memory_present.txt"))
    assert errors == 0
    memory = {k: v for k, v in values.items() if k[0].startswith("psi_memory")}
    assert memory == {
        ("psi_memory_ratio", ("some", "10")): 0.10,
        ("psi_memory_ratio", ("some", "60")): 0.20,
        ("psi_memory_ratio", ("some", "300")): 0.30,
        ("psi_memory_ratio", ("full", "10")): 0.0,
        ("psi_memory_ratio", ("full", "60")): 0.0,
        ("psi_memory_ratio", ("full", "300")): 0.0,
        ("psi_memory_stall_seconds_total", ("some",)): 2.0,
        ("psi_memory_stall_seconds_total", ("full",)): 1.0,
    }
    # The same file as io pressure (the Go io test used it too).
    values, errors = collect(tree(tmp_path / "io", memory="psi_all_zero.txt", io="psi_memory_present.txt"))
    assert values[("psi_io_ratio", ("some", "300"))] == 0.30
    assert values[("psi_io_stall_seconds_total", ("full",))] == 1.0


def test_unknown_lines_and_keys_are_ignored(tmp_path: Path) -> None:
    values, errors = collect(tree(tmp_path, memory="psi_ignores_unknown_lines.txt"))
    assert errors == 0
    assert values[("psi_memory_ratio", ("some", "10"))] == 0.005
    assert values[("psi_memory_stall_seconds_total", ("some",))] == 0.0001


def test_malformed_value_costs_only_that_value(tmp_path: Path) -> None:
    # "some avg10=not-a-number avg60=0.00 avg300=0.00 total=0" and no full line.
    # The Go exporter failed the whole file; here avg10 is one error, the
    # missing full line another, and every other some value is reported.
    values, errors = collect(tree(tmp_path, memory="psi_malformed_value.txt"))
    assert errors == 2
    memory = {k: v for k, v in values.items() if k[0].startswith("psi_memory")}
    assert memory == {
        ("psi_memory_ratio", ("some", "60")): 0.0,
        ("psi_memory_ratio", ("some", "300")): 0.0,
        ("psi_memory_stall_seconds_total", ("some",)): 0.0,
    }
    # cpu and io are unaffected.
    assert values[("psi_cpu_stall_seconds_total", ("some",))] == 0.0
    assert values[("psi_io_stall_seconds_total", ("full",))] == 0.0


def test_missing_full_line_is_not_reported_as_zero(tmp_path: Path) -> None:
    # The Go exporter emitted zeros for a missing full line (seed §12.1 #18).
    proc = tmp_path / "proc"
    pressure = proc / "pressure"
    pressure.mkdir(parents=True)
    (pressure / "cpu").write_text("some avg10=1.00 avg60=2.00 avg300=3.00 total=5\n")  # Linux < 5.13: normal
    (pressure / "memory").write_text("some avg10=1.00 avg60=2.00 avg300=3.00 total=5\n")
    (pressure / "io").write_bytes((DATA / "psi_wellformed.txt").read_bytes())
    values, errors = collect(proc)
    assert errors == 1, "memory without its full line; cpu without one is an older kernel, not an error"
    assert not any(k[1][0] == "full" for k in values if k[0].startswith(("psi_memory", "psi_cpu")))
    assert values[("psi_cpu_ratio", ("some", "300"))] == 0.03
    assert values[("psi_io_ratio", ("full", "10"))] == 0.0111


def test_one_unreadable_file_keeps_the_others(tmp_path: Path) -> None:
    proc = tree(tmp_path, memory="psi_wellformed.txt")
    (proc / "pressure" / "cpu").unlink()
    (proc / "pressure" / "cpu").mkdir()  # not a regular file
    ctx = PluginHarness(SPEC, host_proc=proc).context
    collector = PsiCollector(ctx)
    first = {(s.metric, s.labels) for s in collector.collect()}
    collector.collect()
    assert error_totals(ctx)[ERRORS] == 2, "one error per scrape"
    assert not any(m.startswith("psi_cpu") for m, _ in first)
    assert ("psi_memory_ratio", ("some", "60")) in first and ("psi_io_stall_seconds_total", ("full",)) in first


def _support(proc: Path) -> tuple[str, str, str]:
    harness = PluginHarness(SPEC, host_proc=proc)
    support = harness.check_support()
    return harness.record.state, harness.record.reason, support.fix


def test_kernel_without_psi_is_unsupported_not_an_error(tmp_path: Path) -> None:
    state, reason, fix = _support(tmp_path)
    assert (state, reason) == ("unsupported", "kernel without PSI (CONFIG_PSI or psi=0)")
    assert "psi=1" in fix
    state, _, _ = _support(tree(tmp_path / "ok", memory="psi_all_zero.txt"))
    assert state == "active"


# -- this machine's kernel -----------------------------------------------------

def _snapshot(tmp_path: Path) -> Path:
    """Copy /proc/pressure once, so ours and the references read the very same bytes."""
    if not Path("/proc/pressure/memory").exists():
        pytest.fail("this kernel has no PSI; the real-file test cannot run (CONFIG_PSI / psi=1)")
    proc = tmp_path / "proc"
    (proc / "pressure").mkdir(parents=True)
    for resource in ("cpu", "memory", "io"):
        (proc / "pressure" / resource).write_bytes(Path(f"/proc/pressure/{resource}").read_bytes())
    return proc


def _plain_read(path: Path) -> dict[str, dict[str, str]]:
    """The file read the obvious way, as an independent reference for the averages."""
    out: dict[str, dict[str, str]] = {}
    for line in path.read_text().splitlines():
        scope, *pairs = line.split()
        out[scope] = dict(pair.split("=") for pair in pairs)
    return out


def test_real_pressure_files_equal_node_exporter_and_the_file(tmp_path: Path) -> None:
    proc = _snapshot(tmp_path)
    values, errors = collect(proc)
    assert errors == 0
    node = node_exporter_series(proc, ["pressure"])
    # node_exporter: "waiting" is the some line's total, "stalled" the full line's (cpu: some only).
    references = {
        ("psi_cpu_stall_seconds_total", ("some",)): "node_pressure_cpu_waiting_seconds_total",
        ("psi_memory_stall_seconds_total", ("some",)): "node_pressure_memory_waiting_seconds_total",
        ("psi_memory_stall_seconds_total", ("full",)): "node_pressure_memory_stalled_seconds_total",
        ("psi_io_stall_seconds_total", ("some",)): "node_pressure_io_waiting_seconds_total",
        ("psi_io_stall_seconds_total", ("full",)): "node_pressure_io_stalled_seconds_total",
    }
    for ours, theirs in references.items():
        # Equal within two units in the last place: node_exporter multiplies by 1e-6, we divide by 1e6.
        assert abs(values[ours] - node[(theirs, frozenset())]) <= 2 * math.ulp(values[ours]), ours
    for resource in ("cpu", "memory", "io"):
        for scope, pairs in _plain_read(proc / "pressure" / resource).items():
            for window in ("10", "60", "300"):
                assert values[(f"psi_{resource}_ratio", (scope, window))] == pytest.approx(
                    float(pairs[f"avg{window}"]) / 100, abs=1e-12)
            assert values[(f"psi_{resource}_stall_seconds_total", (scope,))] == int(pairs["total"]) / 1e6


def test_live_pressure_counters_lie_between_two_reads() -> None:
    before = {r: _plain_read(Path(f"/proc/pressure/{r}")) for r in ("cpu", "memory", "io")}
    values, errors = collect(Path("/proc"))
    after = {r: _plain_read(Path(f"/proc/pressure/{r}")) for r in ("cpu", "memory", "io")}
    assert errors == 0
    for resource in ("cpu", "memory", "io"):
        for scope in before[resource]:
            low = int(before[resource][scope]["total"]) / 1e6
            high = int(after[resource][scope]["total"]) / 1e6
            assert low <= values[(f"psi_{resource}_stall_seconds_total", (scope,))] <= high
