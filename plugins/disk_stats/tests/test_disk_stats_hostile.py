"""disk_stats on hostile input: random and mutated samples, odd files, files that change."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.disk_stats.collector import DiskStatsCollector
from crusoe_metrics_exporter.plugins.disk_stats.parser import parse_diskstats
from crusoe_metrics_exporter.testing import error_totals

ERRORS = "disk_stats_collection_errors_total"
HERE = Path(__file__).parent / "data"
ALL = {"device_include": "", "device_exclude": ""}


def real_samples() -> list[bytes]:
    samples = [p.read_bytes() for p in sorted(HERE.glob("*diskstats*")) if p.suffix != ".prom"]
    samples.append(Path("/proc/diskstats").read_bytes())
    return samples


REAL = real_samples()
# Well-formed lines with unique names, from the real samples (the procfs fixture
# reuses 8:0 but its names are unique).
GOOD_LINES = list({ln.split()[2]: ln for s in REAL for ln in s.splitlines() if len(ln.split()) >= 14
                   and all(t.isdigit() for t in ln.split()[3:])}.values())
NON_NEWLINE = st.binary(min_size=1, max_size=8).filter(lambda b: b"\n" not in b)


def _ctx_settings() -> settings:
    return settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_ctx_settings()
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_raise(make_ctx: Any, tmp_path: Path, data: bytes) -> None:
    (tmp_path / "diskstats").write_bytes(data)
    ctx = make_ctx(tmp_path, ALL)
    samples = DiskStatsCollector(ctx).collect()
    result = parse_diskstats(data, lambda _: True)
    assert len(samples) >= len(result.records) * 11
    assert error_totals(ctx)[ERRORS] == result.errors
    # Every reported name is a printable ASCII token that really is in the file.
    for s in samples:
        assert s.labels[0].isascii() and s.labels[0].isprintable() and s.labels[0].encode() in data


@st.composite
def mutated_sample(draw: st.DrawFn) -> tuple[list[bytes], list[bool]]:
    """Real lines; some have their counters mutated (the name and its separator untouched)."""
    lines = draw(st.lists(st.sampled_from(GOOD_LINES), min_size=1, max_size=25, unique=True))
    mutated = []
    out = []
    for line in lines:
        if draw(st.booleans()):
            name_end = line.index(line.split()[2]) + len(line.split()[2]) + 1
            body = bytearray(line[name_end:])
            for _ in range(draw(st.integers(1, 4))):
                op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
                pos = draw(st.integers(0, max(0, len(body) - 1)))
                if op == "flip" and body:
                    body[pos] = draw(st.integers(0, 255).filter(lambda b: b != 10))
                elif op == "insert":
                    body[pos:pos] = draw(NON_NEWLINE)
                elif op == "delete" and body:
                    del body[pos]
                elif op == "cut":
                    del body[pos:]
            out.append(line[:name_end] + bytes(body))
            mutated.append(True)
        else:
            out.append(line)
            mutated.append(False)
    return out, mutated


@_ctx_settings()
@given(sample=mutated_sample(), garbage=st.lists(st.lists(NON_NEWLINE.filter(lambda b: not b.isspace() and
                                                                             not any(c in b for c in b" \t\r\x0b\x0c")),
                                                          min_size=1, max_size=13), max_size=5))
def test_mutated_real_samples(make_ctx: Any, tmp_path: Path, sample: tuple[list[bytes], list[bool]],
                              garbage: list[list[bytes]]) -> None:
    lines, mutated = sample
    garbage_lines = [b" ".join(tokens) for tokens in garbage]  # 1..13 fields: always too short
    text = b"\n".join(lines + garbage_lines) + b"\n"
    (tmp_path / "diskstats").write_bytes(text)
    ctx = make_ctx(tmp_path, ALL)
    samples = DiskStatsCollector(ctx).collect()
    reported = {s.labels[0] for s in samples}
    by_series = {(s.metric, s.labels[0]): s.value for s in samples}
    errors = error_totals(ctx)[ERRORS]
    mutated_reported = 0
    for line, was_mutated in zip(lines, mutated, strict=True):
        name = line.split()[2].decode()
        if not was_mutated:
            # Untouched devices are reported with their exact values, whatever surrounds them.
            fields = line.split()
            assert by_series[("disk_reads_completed_total", name)] == int(fields[3])
            assert by_series[("disk_write_time_ms_total", name)] == int(fields[10])
        elif name in reported:
            mutated_reported += 1
    # Each damaged line is either still a valid record or counted, never both, never lost silently.
    assert mutated_reported + errors == sum(mutated) + len(garbage_lines)


def test_missing_file_counts_every_scrape(make_ctx: Any, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    collector = DiskStatsCollector(ctx)
    assert collector.collect() == []
    assert collector.collect() == []
    assert error_totals(ctx)[ERRORS] == 2


def test_path_is_a_directory(make_ctx: Any, tmp_path: Path) -> None:
    (tmp_path / "diskstats").mkdir()
    ctx = make_ctx(tmp_path)
    assert DiskStatsCollector(ctx).collect() == []
    assert error_totals(ctx)[ERRORS] == 1


def test_empty_file_is_no_devices_not_an_error(make_ctx: Any, tmp_path: Path) -> None:
    (tmp_path / "diskstats").write_bytes(b"")
    ctx = make_ctx(tmp_path)
    assert DiskStatsCollector(ctx).collect() == []
    assert error_totals(ctx)[ERRORS] == 0
    (tmp_path / "diskstats").write_bytes(b"\n   \n\t\n")
    assert DiskStatsCollector(ctx).collect() == []
    assert error_totals(ctx)[ERRORS] == 0


def test_binary_garbage(make_ctx: Any, tmp_path: Path) -> None:
    rng = random.Random(1234)
    garbage = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    good = b" 254 0 vda 1 2 3 4 5 6 7 8 0 10 11\n"
    (tmp_path / "diskstats").write_bytes(garbage + b"\n" + good + garbage)
    ctx = make_ctx(tmp_path)
    samples = DiskStatsCollector(ctx).collect()
    assert {s.labels[0] for s in samples} == {"vda"}
    assert error_totals(ctx)[ERRORS] > 1000  # ~4000 short lines of noise, each counted


def test_counter_overflow_and_huge_numbers(make_ctx: Any, tmp_path: Path) -> None:
    max64 = str(2**64 - 1)
    lines = [
        f" 254 0 vda {max64} 0 0 0 0 0 0 0 0 0 0",  # the largest kernel value is fine
        f" 254 16 vdb {2**64} 0 0 0 0 0 0 0 0 0 0",  # one more is damage
        " 254 32 vdc " + "9" * 5000 + " 0 0 0 0 0 0 0 0 0 0",  # a number int() would refuse
        " 254 48 vdd -1 0 0 0 0 0 0 0 0 0 0",  # signs are not kernel output
        " 254 64 vde \u0661 0 0 0 0 0 0 0 0 0 0",  # an Arabic-Indic digit one
        " 254 80 vdf 1 0 0 0 0 0 0 0 0 0 0",
        " 254 80 vdf 2 0 0 0 0 0 0 0 0 0 0",  # a repeated device: the first line wins
        " 254 96 vd\x07g 1 0 0 0 0 0 0 0 0 0 0",  # a control character in the name
    ]
    (tmp_path / "diskstats").write_bytes("\n".join(lines).encode())
    ctx = make_ctx(tmp_path)
    samples = DiskStatsCollector(ctx).collect()
    reads = {s.labels[0]: s.value for s in samples if s.metric == "disk_reads_completed_total"}
    assert reads == {"vda": float(2**64 - 1), "vdf": 1.0}
    assert error_totals(ctx)[ERRORS] == 6


def test_hundred_megabyte_file(make_ctx: Any, tmp_path: Path) -> None:
    """Defined result: the first 16 MiB are parsed, the rest ignored and counted once."""
    path = tmp_path / "diskstats"
    filler = b"   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    with path.open("wb") as f:
        f.write(b" 254 0 vda 5 0 0 0 0 0 0 0 0 0 0\n")
        block = filler * (1 << 14)
        while f.tell() < 100 * 1024 * 1024:
            f.write(block)
        f.write(b" 254 16 vdb 7 0 0 0 0 0 0 0 0 0 0\n")  # beyond the limit: not seen
    ctx = make_ctx(tmp_path)
    started = time.monotonic()
    samples = DiskStatsCollector(ctx).collect()
    elapsed = time.monotonic() - started
    assert {s.labels[0] for s in samples} == {"vda"}
    assert error_totals(ctx)[ERRORS] == 1
    assert elapsed < 5, f"a 100 MB file took {elapsed:.1f}s"

    # One 100 MB line: nothing usable inside the limit.
    with path.open("wb") as f:
        f.write(b"x" * (100 * 1024 * 1024))
    ctx = make_ctx(tmp_path)
    assert DiskStatsCollector(ctx).collect() == []
    assert error_totals(ctx)[ERRORS] == 1


def _version(n: int, devices: int) -> bytes:
    return b"".join(b" 254 %d vd%c %d 0 0 %d %d 0 0 %d 0 0 0\n" % (i * 16, 97 + i, n, n, n, n) for i in range(devices))


def test_file_changes_between_scrapes(make_ctx: Any, tmp_path: Path) -> None:
    path = tmp_path / "diskstats"
    ctx = make_ctx(tmp_path)
    collector = DiskStatsCollector(ctx)
    path.write_bytes(_version(1, 3))
    first = {(s.metric, s.labels[0]): s.value for s in collector.collect()}
    path.write_bytes(_version(2, 2))  # vdc detached, counters moved on
    second = {(s.metric, s.labels[0]): s.value for s in collector.collect()}
    assert first[("disk_reads_completed_total", "vdc")] == 1
    assert ("disk_reads_completed_total", "vdc") not in second
    assert second[("disk_reads_completed_total", "vda")] == 2
    assert error_totals(ctx)[ERRORS] == 0


def test_file_replaced_while_scraping(make_ctx: Any, tmp_path: Path) -> None:
    """A writer swaps the file atomically (how a fake /proc tree is updated): each scrape sees one version."""
    path = tmp_path / "diskstats"
    versions = [_version(n, 24) for n in (111111, 222222)]
    path.write_bytes(versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            tmp = tmp_path / "diskstats.new"
            tmp.write_bytes(versions[i % 2])
            os.replace(tmp, path)
            i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    ctx = make_ctx(tmp_path)
    collector = DiskStatsCollector(ctx)
    try:
        seen = set()
        for _ in range(200):
            reads = {s.value for s in collector.collect() if s.metric == "disk_reads_completed_total"}
            assert len(reads) == 1, "all devices from one version"
            seen |= reads
    finally:
        stop.set()
        t.join()
    assert seen <= {111111.0, 222222.0}
    assert error_totals(ctx)[ERRORS] == 0


def test_file_rewritten_in_place_while_scraping(make_ctx: Any, tmp_path: Path) -> None:
    """Truncate-and-rewrite can expose a torn file: never an exception, only known devices, errors counted."""
    path = tmp_path / "diskstats"
    versions = [_version(n, 24) for n in (111111, 222222)]
    path.write_bytes(versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            with path.open("r+b") as f:
                f.truncate(0)
                f.write(versions[i % 2][:600])
                f.flush()
                f.write(versions[i % 2][600:])
            i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    ctx = make_ctx(tmp_path)
    collector = DiskStatsCollector(ctx)
    names = {b"vd%c" % (97 + i) for i in range(24)}
    previous = 0
    try:
        for _ in range(200):
            for s in collector.collect():
                assert s.labels[0].encode() in names
            total = error_totals(ctx)[ERRORS]
            assert total >= previous
            previous = total
    finally:
        stop.set()
        t.join()


def test_not_a_regular_file_fails_fast(make_ctx: Any, tmp_path: Path) -> None:
    """A FIFO (which would block open and read) or a device node in place of the file is an error, at once."""
    os.mkfifo(tmp_path / "diskstats")
    ctx = make_ctx(tmp_path)
    started = time.monotonic()
    assert DiskStatsCollector(ctx).collect() == []
    assert time.monotonic() - started < 1
    (tmp_path / "diskstats").unlink()
    (tmp_path / "diskstats").symlink_to("/dev/zero")
    assert DiskStatsCollector(ctx).collect() == []
    assert error_totals(ctx)[ERRORS] == 2
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        DiskStatsCollector(ctx).collect()
    assert len(os.listdir("/proc/self/fd")) == fds_before, "no descriptor leaks on the error path"
