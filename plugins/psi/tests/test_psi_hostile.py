"""psi on hostile input: random bytes, mutated real lines, odd files. Never a traceback; nothing lost silently."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.psi import crusoe_metrics_exporter_plugin
from crusoe_metrics_exporter.plugins.psi.collector import PsiCollector
from crusoe_metrics_exporter.plugins.psi.parser import parse_pressure
from crusoe_metrics_exporter.testing import PluginHarness, error_totals, invalid_samples

DATA = Path(__file__).parent / "data"
SPEC = crusoe_metrics_exporter_plugin()
ERRORS = "psi_collection_errors_total"
REAL_LINES = sorted({line for p in [*DATA.glob("psi_*.txt"), *Path("/proc/pressure").glob("*")]
                     for line in p.read_bytes().splitlines() if line.startswith((b"some ", b"full "))})
CLEAN_LINES = [line for line in REAL_LINES if parse_pressure(line, ()).errors == 0]
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


ODD_TOKENS = [b"avg10=1e3", b"total=-1", b"avg60=nan", b"total=99999999999999999999999", b"avg300=101.00",
              b"avg10=\xd9\xa3", b"=", b"total="]


@st.composite
def mutated_line(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(st.sampled_from(REAL_LINES)))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "token"]))
        if op == "flip" and pos < len(line):
            line[pos] = draw(st.integers(0, 255).filter(lambda b: b != 10))
        elif op == "insert":
            line[pos:pos] = draw(st.binary(min_size=1, max_size=6).filter(lambda b: b"\n" not in b))
        elif op == "delete" and pos < len(line):
            del line[pos]
        elif op == "cut":
            del line[max(pos, 5):]
        elif op == "token":
            line += b" " + draw(st.sampled_from(ODD_TOKENS))
    return bytes(line)


@FAST
@given(lines=st.lists(mutated_line(), max_size=6), required=st.sampled_from([("some",), ("some", "full")]))
def test_every_wanted_value_is_reported_or_counted(lines: list[bytes], required: tuple[str, ...]) -> None:
    result = parse_pressure(b"\n".join(lines), required)
    firsts = [t.split()[0] for t in lines if t.split() and t.split()[0] in (b"some", b"full")]
    scopes = {s.decode() for s in firsts}
    duplicates = len(firsts) - len(scopes)
    missing = len([s for s in required if s not in scopes])
    reported = sum(v is not None for s in result.scopes.values() for v in (*s.ratios, s.stall_seconds))
    assert set(result.scopes) == scopes
    assert result.errors == 4 * len(scopes) - reported + duplicates + missing
    for values in result.scopes.values():
        assert all(r is None or 0.0 <= r <= 1.0 for r in values.ratios)
        assert values.stall_seconds is None or 0.0 <= values.stall_seconds < 2**64 / 1e6


@FAST
@given(clean=st.sampled_from(CLEAN_LINES), noise=st.lists(mutated_line(), max_size=4))
def test_a_clean_line_is_reported_exactly_whatever_surrounds_it(clean: bytes, noise: list[bytes]) -> None:
    scope = clean.split()[0]
    noise = [n for n in noise if not (n.split() and n.split()[0] == scope)]
    result = parse_pressure(b"\n".join([*noise[:2], clean, *noise[2:]]))
    pairs = dict(t.split(b"=") for t in clean.split()[1:])
    values = result.scopes[scope.decode()]
    assert values.stall_seconds == int(pairs[b"total"]) / 1e6
    assert values.ratios == tuple(round(float(pairs[k]) / 100, 6) for k in (b"avg10", b"avg60", b"avg300"))


@FAST
@given(blob=st.binary(max_size=2048))
def test_random_bytes_through_the_collector(tmp_path: Path, blob: bytes) -> None:
    pressure = tmp_path / "pressure"
    pressure.mkdir(exist_ok=True)
    (pressure / "cpu").write_bytes(blob)
    (pressure / "memory").write_bytes(blob[::-1])
    (pressure / "io").write_bytes((DATA / "psi_wellformed.txt").read_bytes())
    ctx = PluginHarness(SPEC, host_proc=tmp_path).context
    samples = PsiCollector(ctx).collect()
    assert not invalid_samples(SPEC, samples), "every sample passes the core's checks"
    grouped = {m: [s for s in samples if s.metric == m] for m in ("psi_io_ratio", "psi_io_stall_seconds_total")}
    # The clean io file is always reported in full.
    assert len(grouped["psi_io_ratio"]) == 6 and len(grouped["psi_io_stall_seconds_total"]) == 2
    assert error_totals(ctx)[ERRORS] >= 0


def test_huge_and_odd_files_are_bounded_errors(tmp_path: Path) -> None:
    pressure = tmp_path / "pressure"
    pressure.mkdir()
    # 10 MB without a newline, a FIFO (must not block) and a device node where files belong.
    (pressure / "cpu").write_bytes(b"some avg10=1.00 " + b"x" * 10_000_000)
    os.mkfifo(pressure / "memory")
    (pressure / "io").symlink_to("/dev/zero")
    ctx = PluginHarness(SPEC, host_proc=tmp_path).context
    assert PsiCollector(ctx).collect() == []
    # memory and io unreadable (1 each); cpu cut short (1) and without a usable some line (1).
    assert error_totals(ctx)[ERRORS] == 4
