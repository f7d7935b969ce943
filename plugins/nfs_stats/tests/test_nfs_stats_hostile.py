"""Property-based tests: random and mutated mountstats never break the plugin.

For every input: no exception leaves the parser or the collector, every
sample passes the core's validation, and a clean mount that follows a
damaged one is reported exactly as if the damage were not there.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins import nfs_stats
from crusoe_metrics_exporter.plugins.nfs_stats.collector import NfsStatsCollector, to_samples
from crusoe_metrics_exporter.plugins.nfs_stats.parser import (
    EVENTS,
    STATS,
    XPRT,
    ParseOptions,
    operation_keys,
    parse,
)
from crusoe_metrics_exporter.testing import PluginHarness, invalid_samples

DATA = Path(__file__).parent / "data"
#: The default volume-id rule, as the targets service hands it to the plugin.
SEED_PATTERN = PluginHarness(nfs_stats).context.targets.volume_pattern
OPTIONS = ParseOptions(SEED_PATTERN, operation_keys(["READ", "WRITE", "GETATTR"]), True)

VICTIM = (DATA / "mountstats_real_nconnect16.txt").read_text()
VICTIM_LINES = VICTIM.splitlines()
SENTINEL = (DATA / "xprt_single_xprt.mountstats").read_text() + (
    "\tevents:\t" + " ".join(str(i) for i in range(27)) + "\n"
    "\tbytes:\t1 2 3 4 5 6 7 8\n"
    "\t        READ: 10 10 0 100 200 1 2 3\n"
)
SENTINEL_VOL = "aaaaaaaa-1111-2222-3333-444444444444"
CLEAN_SENTINEL = sorted(s for s in to_samples(parse(SENTINEL, OPTIONS)))

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text without newlines: line-level damage that stays inside its block.
line_text = st.text(
    alphabet=st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=80
)
token = st.one_of(
    line_text.filter(lambda t: " " not in t and "\t" not in t),
    st.sampled_from(["-1", "18446744073709551616", "1e9", "0x10", "", "nan", "99999999999999999999999", "٣"]),
)


def sentinel_samples(text: str) -> list[tuple[str, tuple[str, ...], object]]:
    return sorted(s for s in to_samples(parse(text, OPTIONS)) if s.labels[0] == SENTINEL_VOL)


def assert_valid(text: str) -> None:
    result = parse(text, OPTIONS)
    samples = to_samples(result)
    assert not invalid_samples(nfs_stats, samples), "the plugin emitted a sample the core rejects"
    assert all(count >= 0 for count in result.errors.values())


@st.composite
def mutated_victim(draw: st.DrawFn) -> str:
    """The golden block with a few random line-level mutations (header kept)."""
    lines = list(VICTIM_LINES)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(1, len(lines) - 1))
        kind = draw(st.sampled_from(["replace_token", "drop_token", "replace_line", "insert", "delete", "dup", "cut"]))
        parts = lines[i].split()
        if kind == "replace_token" and parts:
            j = draw(st.integers(0, len(parts) - 1))
            parts[j] = draw(token)
            lines[i] = "\t" + " ".join(parts)
        elif kind == "drop_token" and parts:
            del parts[draw(st.integers(0, len(parts) - 1))]
            lines[i] = "\t" + " ".join(parts)
        elif kind == "replace_line":
            lines[i] = draw(line_text)
        elif kind == "insert":
            lines.insert(i, draw(line_text))
        elif kind == "delete":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


@FAST
@given(st.text(max_size=3000))
def test_random_text_never_raises(text: str) -> None:
    assert_valid(text)


@FAST
@given(st.lists(st.sampled_from(VICTIM_LINES + SENTINEL.splitlines() + ["device x", "device "]), max_size=60))
def test_shuffled_real_lines_never_raise(lines: list[str]) -> None:
    assert_valid("\n".join(lines))


@FAST
@given(mutated_victim())
def test_mutated_block_does_not_affect_the_next_mount(victim: str) -> None:
    text = victim + SENTINEL
    assert_valid(text)
    assert sentinel_samples(text) == CLEAN_SENTINEL


# Lines of the golden block we parse, with the error kind a broken numeric
# field must be charged to and the indexes of the fields we read.
PARSED_LINES = [
    (i, kind, fields)
    for i, line in enumerate(VICTIM_LINES)
    for key, kind, fields in (
        ("READ:", STATS, (1, 3, 4, 5, 7, 8)),
        ("WRITE:", STATS, (1, 3, 4, 5, 7, 8)),
        ("GETATTR:", STATS, (1, 3, 4, 5, 7, 8)),
        ("xprt:", XPRT, (4, 6, 7, 8, 9, 11, 12)),
        ("events:", EVENTS, (19, 23, 24, 25)),
        ("bytes:", EVENTS, tuple(range(1, 9))),
        ("age:", EVENTS, (1,)),
    )
    if line.split() and line.split()[0] == key
]


@FAST
@given(
    st.sampled_from(PARSED_LINES),
    st.data(),
    st.sampled_from(["x", "-5", "1.5", "18446744073709551616", "12abc", "NaN"]),
)
def test_breaking_a_read_field_moves_the_right_counter(
    target: tuple[int, str, tuple[int, ...]], data: st.DataObject, bad: str
) -> None:
    index, kind, fields = target
    lines = list(VICTIM_LINES)
    parts = lines[index].split()
    parts[data.draw(st.sampled_from(fields))] = bad
    lines[index] = "\t" + " ".join(parts)
    text = "\n".join(lines) + "\n" + SENTINEL
    result = parse(text, OPTIONS)
    expected = {STATS: 0, XPRT: 0, EVENTS: 0}
    expected[kind] = 1
    assert result.errors == expected
    assert sentinel_samples(text) == CLEAN_SENTINEL
    # Everything else of the damaged block is still there.
    clean = {(s.metric, s.labels) for s in to_samples(parse(VICTIM, OPTIONS))}
    damaged = {(s.metric, s.labels) for s in to_samples(result)}
    lost = clean - damaged
    assert lost, "the broken line must not be reported"
    per_line = {STATS: 6, XPRT: 7 + 1, EVENTS: 8}  # op fields; lane fields + volume backlog; bytes line
    assert len(lost) <= per_line[kind]


def _collector(tmp: Path) -> tuple[NfsStatsCollector, PluginHarness]:
    harness = PluginHarness(nfs_stats, host_proc=tmp, options={"max_file_size": 1 << 20})
    collector = NfsStatsCollector(harness.context)
    collector.start()
    return collector, harness


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4000), st.booleans())
def test_random_bytes_through_the_collector(tmp_path: Path, blob: bytes, prefix_real: bool) -> None:
    (tmp_path / "1").mkdir(exist_ok=True)
    content = (VICTIM.encode() + blob) if prefix_real else blob
    (tmp_path / "1" / "mountstats").write_bytes(content + SENTINEL.encode())
    collector, harness = _collector(tmp_path)
    samples = list(collector.collect())
    assert not invalid_samples(nfs_stats, samples)
    # The sentinel follows the garbage: it may only be hidden if the garbage
    # ends in an unterminated "device" line that swallows its header line.
    sentinel = sorted(s for s in samples if s.labels[0] == SENTINEL_VOL)
    if blob.endswith(b"\n") or not blob:
        assert sentinel == CLEAN_SENTINEL
    assert all(v >= 0 for v in harness.errors.metric_totals().values())
