"""meminfo on the Go exporter's fixture (exact values), this machine's real file, and hostile input."""

from __future__ import annotations

from pathlib import Path

from helpers.node_exporter import node_exporter_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.meminfo import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.meminfo.collector import WANTED, MeminfoCollector
from crusoe_metrics_exporter.plugins.meminfo.parser import parse_meminfo
from crusoe_metrics_exporter.testing import PluginHarness, error_totals, invalid_samples

DATA = Path(__file__).parent / "data"
SPEC = crusoe_metrics_exporter_plugin()
ERRORS = "mem_collection_errors_total"


def collect(proc: Path, text: bytes | None = None) -> tuple[dict[str, float], int]:
    if text is not None:
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "meminfo").write_bytes(text)
    ctx = PluginHarness(SPEC, host_proc=proc).context
    samples = MeminfoCollector(ctx).collect()
    assert not invalid_samples(SPEC, samples)
    return {s.metric: float(s.value) for s in samples}, error_totals(ctx)[ERRORS]  # type: ignore[arg-type]


def test_seed_fixture(tmp_path: Path) -> None:
    values, errors = collect(tmp_path, (DATA / "meminfo_fixture.txt").read_bytes())
    assert values == {"mem_available_bytes": 8192000 * 1024, "swap_used_bytes": (2048000 - 1024000) * 1024}
    assert errors == 0


def test_missing_file_is_one_error_per_scrape(tmp_path: Path) -> None:
    ctx = PluginHarness(SPEC, host_proc=tmp_path).context
    collector = MeminfoCollector(ctx)
    assert collector.collect() == [] and collector.collect() == []
    assert error_totals(ctx)[ERRORS] == 2


def test_one_bad_line_keeps_the_other_values(tmp_path: Path) -> None:
    # The Go exporter lost every meminfo value when one wanted line was bad.
    text = (DATA / "meminfo_fixture.txt").read_bytes().replace(b"8192000 kB", b"81x2000 kB")
    values, errors = collect(tmp_path, text)
    assert values == {"swap_used_bytes": (2048000 - 1024000) * 1024}
    assert errors == 1, "the bad line is counted once, not again as missing"
    text = (DATA / "meminfo_fixture.txt").read_bytes().replace(b"SwapFree:        1024000 kB", b"SwapFree: 1 MB")
    values, errors = collect(tmp_path, text)
    assert values == {"mem_available_bytes": 8192000 * 1024}
    assert errors == 1


def test_absent_keys_and_repeats(tmp_path: Path) -> None:
    values, errors = collect(tmp_path, b"MemTotal: 1 kB\nSwapTotal: 0 kB\n")
    assert values == {} and errors == 2, "MemAvailable and SwapFree absent"
    values, errors = collect(tmp_path, b"MemAvailable: 2 kB\nMemAvailable: 3 kB\nSwapTotal: 4 kB\nSwapFree: 4 kB\n")
    assert values == {"mem_available_bytes": 2048, "swap_used_bytes": 0} and errors == 1, "first line wins"
    values, errors = collect(tmp_path, b"MemAvailable: 2 kB\nSwapTotal: 4 kB\nSwapFree: 5 kB\n")
    assert values == {"mem_available_bytes": 2048} and errors == 1, "more swap free than exists"


def test_unit_less_value_is_bytes(tmp_path: Path) -> None:
    assert parse_meminfo(b"MemAvailable: 4096\n", WANTED).values == {"MemAvailable": 4096}


# -- this machine's kernel -----------------------------------------------------

def test_real_meminfo_equals_node_exporter(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_bytes(Path("/proc/meminfo").read_bytes())  # one snapshot read by both
    values, errors = collect(proc)
    assert errors == 0
    node = node_exporter_series(proc, ["meminfo"])
    assert values["mem_available_bytes"] == node[("node_memory_MemAvailable_bytes", frozenset())]
    swap_used = node[("node_memory_SwapTotal_bytes", frozenset())] - node[("node_memory_SwapFree_bytes", frozenset())]
    assert values["swap_used_bytes"] == swap_used
    assert values["mem_available_bytes"] > 0


# -- hostile input ---------------------------------------------------------------

REAL_LINES = Path("/proc/meminfo").read_bytes().splitlines() + (DATA / "meminfo_fixture.txt").read_bytes().splitlines()


@st.composite
def meminfo_text(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Real lines, some replaced by mutations; returns the text and the untouched lines."""
    lines = draw(st.lists(st.sampled_from(REAL_LINES), min_size=1, max_size=40))
    out, clean = [], []
    for line in lines:
        if draw(st.integers(0, 3)) == 0:
            b = bytearray(line)
            pos = draw(st.integers(0, len(b)))
            b[pos:pos + draw(st.integers(0, 3))] = draw(st.binary(max_size=4).filter(lambda x: b"\n" not in x))
            out.append(bytes(b))
        else:
            out.append(line)
            clean.append(line)
    return b"\n".join(out), clean


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sample=meminfo_text())
def test_hostile_text_reports_or_counts_every_wanted_line(tmp_path: Path, sample: tuple[bytes, list[bytes]]) -> None:
    text, clean = sample
    result = parse_meminfo(text, WANTED)
    firsts: dict[str, bytes] = {}
    wanted_lines = 0
    for line in text.split(b"\n"):
        tokens = line.split()
        if tokens and tokens[0].endswith(b":") and tokens[0][:-1].decode("latin-1") in WANTED:
            wanted_lines += 1
            firsts.setdefault(tokens[0][:-1].decode(), line)
    # Each wanted line is either a value or an error; none is lost silently.
    assert len(result.values) + result.errors == wanted_lines
    for key, line in firsts.items():
        if line in clean:
            assert result.values[key] == int(line.split()[1]) * 1024
    _, errors = collect(tmp_path, text)
    assert errors >= result.errors


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=4096))
def test_random_bytes_never_raise(tmp_path: Path, blob: bytes) -> None:
    values, errors = collect(tmp_path, blob)
    parsed = parse_meminfo(blob, WANTED)
    assert values.get("mem_available_bytes") == parsed.values.get("MemAvailable")
    # Every wanted key without a value is at least one error.
    assert errors >= len(WANTED - parsed.values.keys())
