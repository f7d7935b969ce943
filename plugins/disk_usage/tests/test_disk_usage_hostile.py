"""disk_usage on hostile mount tables: random and mutated samples, odd files, files that change."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.disk_usage.collector import DiskUsageCollector
from crusoe_metrics_exporter.plugins.disk_usage.parser import MountSelector, parse_mounts, unescape
from crusoe_metrics_exporter.testing import error_totals

ERRORS = "disk_usage_collection_errors_total"
DATA = Path(__file__).parent / "data"

# Good lines: every seed fixture line plus this machine's real mount table, each
# naming a distinct device so the first-mount rule cannot hide one behind another.
_CANDIDATES = [ln for p in sorted(DATA.glob("*.mounts")) for ln in p.read_bytes().splitlines()]
_CANDIDATES += Path("/proc/self/mounts").read_bytes().splitlines()
GOOD_LINES = list({ln.split()[0]: ln for ln in _CANDIDATES if ln.split()}.values())


def _settings() -> settings:
    return settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(make_ctx: Any, proc: Path, options: dict[str, Any] | None = None) -> tuple[list[Any], int]:
    ctx = make_ctx(proc, options)
    collector = DiskUsageCollector(ctx)
    collector.start()
    try:
        samples = collector.collect()
    finally:
        collector.stop()
    return samples, error_totals(ctx)[ERRORS]


def _check_accounting(data: bytes, samples: list[Any], errors: int, selector: MountSelector) -> None:
    """Every dropped line and every failed statfs moved the counter, exactly once."""
    parsed = parse_mounts(data)
    chosen = selector.select(parsed.entries)
    failed = {s.labels for s in samples if s.metric == "disk_mount_stuck"} - {
        s.labels for s in samples if s.metric == "disk_bytes_total"}
    assert len({s.labels for s in samples}) == len(chosen)
    assert errors == parsed.errors + len(failed)


@_settings()
@given(data=st.binary(max_size=2048))
def test_random_bytes(make_ctx: Any, host_mounts: Any, data: bytes) -> None:
    samples, errors = _run(make_ctx, host_mounts(data), {"device_include": ""})
    _check_accounting(data, samples, errors, MountSelector(""))
    for s in samples:
        s.labels[1].encode("utf-8")  # label values are always valid text


@st.composite
def mutated_lines(draw: st.DrawFn) -> list[bytes]:
    out = []
    for line in draw(st.lists(st.sampled_from(GOOD_LINES), min_size=1, max_size=10)):
        body = bytearray(line)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(body)))
            op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
            if op == "flip" and pos < len(body):
                body[pos] = draw(st.integers(0, 255).filter(lambda b: b != 10))
            elif op == "insert":
                body[pos:pos] = draw(st.sampled_from([b"\\040", b"\\", b"\\777", b" ", b"\x00", b"/dev/vdz", b"\xff"]))
            elif op == "delete" and pos < len(body):
                del body[pos]
            elif op == "cut":
                del body[pos:]
        out.append(bytes(body))
    return out


@_settings()
@given(mutated=mutated_lines())
def test_mutated_real_samples(make_ctx: Any, host_mounts: Any, mutated: list[bytes]) -> None:
    # The real lines come first: by the first-mount rule nothing after them can
    # displace them, except a line mounted over the same mount point.
    data = b"\n".join(GOOD_LINES + mutated) + b"\n"
    samples, errors = _run(make_ctx, host_mounts(data))
    _check_accounting(data, samples, errors, MountSelector())
    reported = {s.labels for s in samples if s.metric == "disk_bytes_total"}
    mounted_over = {e.mount_point for e in parse_mounts(b"\n".join(mutated)).entries}
    for line in GOOD_LINES:
        source, mount_point = line.split()[:2]
        if unescape(mount_point) in mounted_over:
            continue
        label = MountSelector().device_label(source.decode())
        if label is not None:
            assert (label, mount_point.decode()) in reported


def test_empty_file(make_ctx: Any, host_mounts: Any) -> None:
    assert _run(make_ctx, host_mounts(b"")) == ([], 0)
    assert _run(make_ctx, host_mounts(b"\n\n   \n")) == ([], 0)


def test_binary_garbage(make_ctx: Any, host_mounts: Any) -> None:
    rng = random.Random(99)
    garbage = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    samples, errors = _run(make_ctx, host_mounts(garbage + b"\n/dev/vda1 /tmp ext4 rw 0 0\n" + garbage))
    assert {s.labels for s in samples} == {("vda1", "/tmp")}
    assert errors > 100  # lines with one field or a relative mount point are each counted


def test_hundred_megabyte_file(make_ctx: Any, host_mounts: Any) -> None:
    """Defined result: the first 16 MiB are parsed, the rest ignored and counted once."""
    proc = host_mounts(b"")
    path = proc / "1" / "mounts"
    with path.open("wb") as f:
        f.write(b"/dev/vda1 /tmp ext4 rw 0 0\n")
        block = b"tmpfs /run/user/1000 tmpfs rw,nosuid,nodev 0 0\n" * (1 << 14)
        while f.tell() < 100 * 1024 * 1024:
            f.write(block)
        f.write(b"/dev/vdb /tmp ext4 rw 0 0\n")  # beyond the limit
    started = time.monotonic()
    samples, errors = _run(make_ctx, proc)
    elapsed = time.monotonic() - started
    assert {s.labels for s in samples} == {("vda1", "/tmp")}
    assert errors == 1
    assert elapsed < 5, f"a 100 MB mount table took {elapsed:.1f}s"


def test_mount_table_changes_between_scrapes(make_ctx: Any, host_mounts: Any) -> None:
    proc = host_mounts(b"/dev/vda1 /tmp ext4 rw 0 0\n/dev/vdb / ext4 rw 0 0\n")
    ctx = make_ctx(proc)
    collector = DiskUsageCollector(ctx)
    collector.start()
    try:
        first = {s.labels for s in collector.collect()}
        (proc / "1" / "mounts").write_bytes(b"/dev/vdb / ext4 rw 0 0\n/dev/vdc /tmp ext4 rw 0 0\n")
        second = {s.labels for s in collector.collect()}
    finally:
        collector.stop()
    assert first == {("vda1", "/tmp"), ("vdb", "/")}
    assert second == {("vdb", "/"), ("vdc", "/tmp")}  # an unmounted disk disappears, a new one appears
    assert error_totals(ctx)[ERRORS] == 0


def test_mount_table_replaced_while_scraping(make_ctx: Any, host_mounts: Any) -> None:
    versions = [b"/dev/vda1 /tmp ext4 rw 0 0\n/dev/vdb / ext4 rw 0 0\n", b"/dev/vdc /tmp ext4 rw 0 0\n"]
    proc = host_mounts(versions[0])
    path = proc / "1" / "mounts"
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            tmp = path.with_suffix(".new")
            tmp.write_bytes(versions[i % 2])
            os.replace(tmp, path)
            i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    ctx = make_ctx(proc)
    collector = DiskUsageCollector(ctx)
    collector.start()
    try:
        for _ in range(100):
            devices = {s.labels[0] for s in collector.collect()}
            assert devices in ({"vda1", "vdb"}, {"vdc"})
    finally:
        stop.set()
        t.join()
        collector.stop()
    assert error_totals(ctx)[ERRORS] == 0
