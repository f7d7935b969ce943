"""procstat on the Go exporter's fixtures (exact values), this machine's real /proc/stat, and hostile input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.node_exporter import node_exporter_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.procstat import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.procstat.collector import ProcStatCollector
from crusoe_metrics_exporter.plugins.procstat.parser import FIELDS, parse_stat
from crusoe_metrics_exporter.testing import PluginHarness, error_totals, invalid_samples

DATA = Path(__file__).parent / "data"
SPEC = crusoe_metrics_exporter_plugin()
CPU_ERRORS = "cpu_steal_collection_errors_total"
IO_ERRORS = "io_collection_errors_total"
USER_HZ = os.sysconf("SC_CLK_TCK")


def collect(proc: Path, text: bytes | None = None) -> tuple[dict[str, float], int, int]:
    if text is not None:
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "stat").write_bytes(text)
    ctx = PluginHarness(SPEC, host_proc=proc).context
    samples = ProcStatCollector(ctx).collect()
    assert not invalid_samples(SPEC, samples)
    totals = error_totals(ctx)
    return {s.metric: float(s.value) for s in samples}, totals[CPU_ERRORS], totals[IO_ERRORS]  # type: ignore[arg-type]


def fixture(name: str) -> bytes:
    return (DATA / f"procstat_{name}.txt").read_bytes()


@pytest.mark.parametrize(
    ("name", "values", "cpu_errors", "io_errors"),
    [
        # The aggregate line's steal (8), not cpu0's (99).
        ("cpusteal_happy", {"cpu_steal_seconds_total": 0.08, "procs_running": 2, "procs_blocked": 3}, 0, 0),
        ("fixture", {"cpu_steal_seconds_total": 0.08, "procs_running": 2, "procs_blocked": 3}, 0, 0),
        ("no_steal_column", {"procs_running": 4}, 1, 1),
        ("no_procs_running", {"cpu_steal_seconds_total": 0.08, "procs_blocked": 1}, 1, 0),
        ("malformed_steal", {"procs_running": 5}, 1, 1),
        ("malformed_procs_running", {"cpu_steal_seconds_total": 0.08}, 1, 1),
        ("both_fields_missing", {"procs_blocked": 0}, 2, 0),
    ],
)
def test_seed_fixtures(tmp_path: Path, name: str, values: dict[str, float], cpu_errors: int, io_errors: int) -> None:
    # io errors here: the fixture has no procs_blocked line (the Go cpu tests did not look at it).
    assert collect(tmp_path, fixture(name)) == (values, cpu_errors, io_errors)


def test_missing_file_counts_on_both_counters(tmp_path: Path) -> None:
    ctx = PluginHarness(SPEC, host_proc=tmp_path).context
    collector = ProcStatCollector(ctx)
    assert collector.collect() == [] and collector.collect() == []
    assert error_totals(ctx) == {CPU_ERRORS: 2, IO_ERRORS: 2}, "cumulative across scrapes"


def test_megabyte_intr_line(tmp_path: Path) -> None:
    # The Go test's 120 KB line, and a 2 MB one with the fields on both sides
    # of it. How fast: benchmarks/host_health_bench.py.
    go_case = b"cpu  100 0 50 1000 5 0 3 8 0 0\nintr 0 " + b"1 " * 60000 + b"\nprocs_running 2\n"
    assert collect(tmp_path, go_case)[0] == {"cpu_steal_seconds_total": 0.08, "procs_running": 2}
    big = b"cpu  100 0 50 1000 5 0 3 8 0 0\nintr 0 " + b"123456 " * 300_000 + b"\nprocs_running 2\nprocs_blocked 1\n"
    assert len(big) > 2_000_000
    assert collect(tmp_path, big) == ({"cpu_steal_seconds_total": 0.08, "procs_running": 2, "procs_blocked": 1}, 0, 0)


def test_key_is_a_whole_token(tmp_path: Path) -> None:
    text = b"cpu0 1 2 3 4 5 6 7 99\ncpu  1 2 3 4 5 6 7 8\nprocs_running_x 9\nprocs_running 3\nprocs_blocked 0"
    assert collect(tmp_path, text)[0] == {"cpu_steal_seconds_total": 0.08, "procs_running": 3, "procs_blocked": 0}


def test_repeated_line_first_wins_and_is_counted(tmp_path: Path) -> None:
    text = fixture("fixture") + b"procs_blocked 9\n"
    values, cpu_errors, io_errors = collect(tmp_path, text)
    assert values["procs_blocked"] == 3 and (cpu_errors, io_errors) == (0, 1)


# -- this machine's kernel -----------------------------------------------------

def _aggregate_steal(text: bytes) -> int:
    return int(text.split(b"\n", 1)[0].split()[8])


def test_real_stat_equals_the_file_and_node_exporter(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    snapshot = Path("/proc/stat").read_bytes()
    (proc / "stat").write_bytes(snapshot)
    values, cpu_errors, io_errors = collect(proc)
    assert (cpu_errors, io_errors) == (0, 0)
    assert values["cpu_steal_seconds_total"] == _aggregate_steal(snapshot) / USER_HZ
    node = node_exporter_series(proc, ["stat", "cpu"])
    assert values["procs_running"] == node[("node_procs_running", frozenset())]
    assert values["procs_blocked"] == node[("node_procs_blocked", frozenset())]
    per_cpu = [v for (name, labels), v in node.items() if name == "node_cpu_seconds_total"
               and ("mode", "steal") in labels]
    assert len(per_cpu) == os.cpu_count()
    # The kernel truncates each per-CPU line to ticks separately and the
    # aggregate line once, so the aggregate exceeds the per-CPU sum by less
    # than one tick per CPU.
    assert sum(per_cpu) <= values["cpu_steal_seconds_total"] + 1e-9
    assert values["cpu_steal_seconds_total"] - sum(per_cpu) < len(per_cpu) / USER_HZ


def test_live_steal_lies_between_two_reads() -> None:
    before = _aggregate_steal(Path("/proc/stat").read_bytes())
    values, cpu_errors, io_errors = collect(Path("/proc"))
    after = _aggregate_steal(Path("/proc/stat").read_bytes())
    assert (cpu_errors, io_errors) == (0, 0)
    assert before / USER_HZ <= values["cpu_steal_seconds_total"] <= after / USER_HZ
    assert values["procs_running"] >= 1, "at least this process is runnable"


# -- hostile input ---------------------------------------------------------------

REAL_LINES = [line for p in [Path("/proc/stat"), *DATA.glob("procstat_*.txt")] for line in p.read_bytes().splitlines()]
KEYS = {"steal": b"cpu", "procs_running": b"procs_running", "procs_blocked": b"procs_blocked"}


@st.composite
def stat_text(draw: st.DrawFn) -> bytes:
    lines = list(draw(st.lists(st.sampled_from(REAL_LINES), max_size=30)))
    for i in range(len(lines)):
        if draw(st.integers(0, 3)) == 0:
            b = bytearray(lines[i])
            pos = draw(st.integers(0, len(b)))
            b[pos:pos + draw(st.integers(0, 3))] = draw(st.binary(max_size=4).filter(lambda x: b"\n" not in x))
            lines[i] = bytes(b)
    return b"\n".join(lines)


KEYED_NOISE = st.binary(max_size=300).map(lambda b: b.replace(b"#", b"cpu ").replace(b"%", b"\nprocs_blocked"))


@settings(max_examples=300, deadline=None)
@given(text=stat_text() | KEYED_NOISE)
def test_every_field_is_reported_or_counted(text: bytes) -> None:
    result = parse_stat(text)
    for field in FIELDS:
        key = KEYS[field]
        lines = [line for line in text.split(b"\n")
                 if line.startswith(key) and line[len(key):len(key) + 1] in (b"", b" ", b"\t", b"\r", b"\x0b", b"\x0c")]
        # Reported exactly as the first such line says, or counted; repeats are counted too.
        reported = field in result.values
        assert reported + (result.errors[field] - max(0, len(lines) - 1)) == 1
        if reported:
            column = 8 if field == "steal" else 1
            assert result.values[field] == int(lines[0].split()[column])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=4096))
def test_random_bytes_never_raise(tmp_path: Path, blob: bytes) -> None:
    values, cpu_errors, io_errors = collect(tmp_path, blob)
    assert cpu_errors + io_errors >= 3 - len(values)
