"""nfs_stats driven through the real exporter: settings, exposition, file trouble."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.settings import Overrides

DATA = Path(__file__).parent / "data"
GOLDEN_VOL = "00000000-0000-0000-0000-000000000001"
ERROR_COUNTERS = (
    "crusoe_vm_nfs_stats_collection_errors_total",
    "crusoe_vm_nfs_xprt_stats_collection_errors_total",
    "crusoe_vm_nfs_mount_events_collection_errors_total",
)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    (tmp_path / "1").mkdir()
    shutil.copy(DATA / "mountstats_real_nconnect16.txt", tmp_path / "1" / "mountstats")
    return tmp_path


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    made: list[Exporter] = []
    yield made
    for ex in made:
        ex.stop()


def start(
    exporters: list[Exporter], proc: Path, env: dict[str, str] | None = None, **options: str
) -> Exporter:
    environ = {"HOST_PROC_PATH": str(proc), **(env or {})}
    overrides = Overrides({f"plugins.nfs_stats.{k}": v for k, v in options.items()})
    ex = Exporter.from_environment(environ=environ, overrides=overrides)
    exporters.append(ex)
    ex.start(only=["nfs_stats"])
    return ex


def scrape(ex: Exporter) -> Series:
    text = render(ex.collect()).decode()
    out: Series = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("crusoe_vm_nfs_"):
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    return series[name, tuple(sorted(labels.items()))]


def errors(series: Series) -> tuple[float, ...]:
    return tuple(value(series, n) for n in ERROR_COUNTERS)


def record(ex: Exporter) -> tuple[str, str]:
    rec = next(r for r in ex.records if r.name == "nfs_stats")
    return rec.state, rec.reason


def test_end_to_end_exposition(exporters: list[Exporter], proc: Path) -> None:
    ex = start(exporters, proc)
    assert record(ex) == ("active", "")
    s = scrape(ex)
    assert value(s, "crusoe_vm_nfs_rpc_count_total", volume_id=GOLDEN_VOL, nfs_operation="read") == 637414
    assert value(s, "crusoe_vm_nfs_xprt_sends_total", volume_id=GOLDEN_VOL, xprt_idx="15") == 40449
    assert value(s, "crusoe_vm_nfs_mount_age_seconds", volume_id=GOLDEN_VOL) == 245
    assert value(s, "crusoe_vm_nfs_rpc_backlog", volume_id=GOLDEN_VOL) == 0
    assert errors(s) == (0, 0, 0)
    text = render(ex.collect()).decode()
    # Seed names without _total are exposed verbatim (untyped), with help.
    assert "# TYPE crusoe_vm_nfs_rpc_backlog untyped" in text
    assert "# HELP crusoe_vm_nfs_mount_delay_events_total" in text
    assert "Structurally zero" not in text
    assert "NFS3ERR_JUKEBOX" in text


def test_mountstats_path_env_overrides_host_proc(exporters: list[Exporter], proc: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.mountstats"
    shutil.copy(DATA / "xprt_single_xprt.mountstats", other)
    ex = start(exporters, proc, {"MOUNTSTATS_PATH": str(other)})
    s = scrape(ex)
    lane = {"volume_id": "aaaaaaaa-1111-2222-3333-444444444444", "xprt_idx": "0"}
    assert value(s, "crusoe_vm_nfs_xprt_sends_total", **lane) == 200830
    assert not any(dict(labels).get("volume_id") == GOLDEN_VOL for _, labels in s)


def test_volume_id_disabled_and_unmatched_skip(exporters: list[Exporter], proc: Path) -> None:
    export = "nfs.example.com:/volumes/" + GOLDEN_VOL
    s = scrape(start(exporters, proc, {"NFS_ENABLE_VOLUME_ID": "false"}))
    assert value(s, "crusoe_vm_nfs_rpc_count_total", volume_id=export, nfs_operation="read") == 637414
    s = scrape(start(exporters, proc, {"NFS_ENABLE_VOLUME_ID": "false"}, unmatched_mounts="skip"))
    assert errors(s) == (0, 0, 0)
    assert [k for k in s if k[0] not in ERROR_COUNTERS] == []


def test_extra_operations_option(exporters: list[Exporter], proc: Path) -> None:
    s = scrape(start(exporters, proc, operations="READ,WRITE,GETATTR"))
    assert value(s, "crusoe_vm_nfs_rpc_count_total", volume_id=GOLDEN_VOL, nfs_operation="getattr") == 35


def test_bad_operation_name_stops_start_up_naming_the_setting(exporters: list[Exporter], proc: Path) -> None:
    with pytest.raises(SettingError, match=r"""^invalid --set plugins\.nfs_stats\.operations='READ,bad"op': 'bad"op' """
                                           r"is not an NFS operation name"):
        start(exporters, proc, operations='READ,bad"op')


def test_missing_file_at_start_is_unsupported(exporters: list[Exporter], tmp_path: Path) -> None:
    ex = start(exporters, tmp_path)
    state, reason = record(ex)
    assert state == "unsupported"
    assert str(tmp_path / "1" / "mountstats") in reason


def test_file_vanishing_counts_on_all_three_counters(exporters: list[Exporter], proc: Path) -> None:
    ex = start(exporters, proc)
    assert errors(scrape(ex)) == (0, 0, 0)
    (proc / "1" / "mountstats").unlink()
    s = scrape(ex)
    assert errors(s) == (1, 1, 1)
    assert [k for k in s if k[0] not in ERROR_COUNTERS] == []
    # Cumulative, and the plugin recovers when the file is back.
    assert errors(scrape(ex)) == (2, 2, 2)
    shutil.copy(DATA / "mountstats_real_nconnect16.txt", proc / "1" / "mountstats")
    s = scrape(ex)
    assert errors(s) == (2, 2, 2)
    assert value(s, "crusoe_vm_nfs_mount_age_seconds", volume_id=GOLDEN_VOL) == 245


def test_unreadable_path_is_a_directory(exporters: list[Exporter], proc: Path) -> None:
    ex = start(exporters, proc)
    (proc / "1" / "mountstats").unlink()
    (proc / "1" / "mountstats").mkdir()
    assert errors(scrape(ex)) == (1, 1, 1)


def test_empty_file_reports_nothing_and_no_error(exporters: list[Exporter], proc: Path) -> None:
    ex = start(exporters, proc)
    (proc / "1" / "mountstats").write_bytes(b"")
    s = scrape(ex)
    assert errors(s) == (0, 0, 0)
    assert [k for k in s if k[0] not in ERROR_COUNTERS] == []


def test_binary_garbage_is_one_error(exporters: list[Exporter], proc: Path) -> None:
    ex = start(exporters, proc)
    garbage = bytes(range(256)) * 64 + b"\x00\xff\xfe" * 1000
    (proc / "1" / "mountstats").write_bytes(garbage)
    s = scrape(ex)
    assert errors(s) == (1, 0, 0)
    assert [k for k in s if k[0] not in ERROR_COUNTERS] == []


def test_binary_garbage_inside_a_block_keeps_other_mounts(exporters: list[Exporter], proc: Path) -> None:
    good = (DATA / "mountstats_real_nconnect16.txt").read_bytes()
    bad = (DATA / "xprt_single_xprt.mountstats").read_bytes().replace(b"200830", b"\xff\x00\xfe")
    (proc / "1" / "mountstats").write_bytes(bad + good)
    s = scrape(start(exporters, proc))
    assert errors(s) == (0, 1, 0)
    assert value(s, "crusoe_vm_nfs_rpc_count_total", volume_id=GOLDEN_VOL, nfs_operation="read") == 637414
    assert value(s, "crusoe_vm_nfs_mount_age_seconds", volume_id="aaaaaaaa-1111-2222-3333-444444444444") == 100


def test_100_megabyte_file_is_cut_at_the_limit(exporters: list[Exporter], proc: Path) -> None:
    # 100 MB of one real volume's block followed by a second volume that lies
    # beyond the default 32 MiB limit: the first is reported, the cut is one
    # error, the tail is not read, and the scrape stays bounded in time.
    block = (DATA / "mountstats_real_nconnect16.txt").read_bytes()
    tail = (DATA / "xprt_single_xprt.mountstats").read_bytes()
    path = proc / "1" / "mountstats"
    with path.open("wb") as fh:
        chunk = block * 256
        written = 0
        while written < 100 * 1024 * 1024:
            fh.write(chunk)
            written += len(chunk)
        fh.write(tail)
    ex = start(exporters, proc)
    started = time.monotonic()
    s = scrape(ex)
    elapsed = time.monotonic() - started
    assert errors(s) == (1, 0, 0)
    assert value(s, "crusoe_vm_nfs_rpc_count_total", volume_id=GOLDEN_VOL, nfs_operation="read") == 637414
    assert not any(dict(labels).get("volume_id", "").startswith("aaaaaaaa") for _, labels in s)
    assert elapsed < 5.0  # the core's default collect timeout


def test_100_megabyte_line_without_newline(exporters: list[Exporter], proc: Path) -> None:
    path = proc / "1" / "mountstats"
    with path.open("wb") as fh:
        fh.write(b"device ")
        for _ in range(100):
            fh.write(b"x" * (1024 * 1024))
    s = scrape(start(exporters, proc))
    # No whole block fits: nothing reported, one error for the cut.
    assert errors(s) == (1, 0, 0)
    assert [k for k in s if k[0] not in ERROR_COUNTERS] == []


def test_file_changes_between_scrapes(exporters: list[Exporter], proc: Path) -> None:
    ex = start(exporters, proc)
    assert value(scrape(ex), "crusoe_vm_nfs_mount_age_seconds", volume_id=GOLDEN_VOL) == 245
    # The mount is replaced by another volume: the old series disappear.
    shutil.copy(DATA / "xprt_single_xprt.mountstats", proc / "1" / "mountstats")
    s = scrape(ex)
    assert not any(dict(labels).get("volume_id") == GOLDEN_VOL for _, labels in s)
    assert value(s, "crusoe_vm_nfs_mount_age_seconds", volume_id="aaaaaaaa-1111-2222-3333-444444444444") == 100
    assert errors(s) == (0, 0, 0)


def test_file_rewritten_while_being_read(exporters: list[Exporter], proc: Path) -> None:
    """A writer rewrites the file (truncate + write) as fast as it can while we scrape.

    Every scrape must succeed, and every value reported must come from one of
    the two versions: a torn read may lose lines (counted), never invent data.
    """
    a = (DATA / "mountstats_real_nconnect16.txt").read_bytes()
    b = a.replace(b"READ: 637414 637414", b"READ: 637999 637999").replace(b"age:\t245", b"age:\t246")
    path = proc / "1" / "mountstats"
    ex = start(exporters, proc)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            for content in (a, b):
                # Small flushed writes so a scrape often sees a partial file
                # whose last line is cut in the middle of a number.
                with path.open("wb", buffering=0) as fh:
                    for i in range(0, len(content), 97):
                        fh.write(content[i : i + 97])

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        seen_counts = set()
        for _ in range(60):
            s = scrape(ex)
            key = ("crusoe_vm_nfs_rpc_count_total", (("nfs_operation", "read"), ("volume_id", GOLDEN_VOL)))
            if key in s:
                seen_counts.add(s[key])
            age = s.get(("crusoe_vm_nfs_mount_age_seconds", (("volume_id", GOLDEN_VOL),)))
            assert age in (None, 245, 246)
    finally:
        stop.set()
        thread.join()
    # How often a scrape lands on a whole file depends on scheduling, so the
    # race itself only checks that nothing invented was reported...
    assert seen_counts <= {637414, 637999}
    # ...and once the writer is done the next scrape reports the last version.
    path.write_bytes(b)
    key = ("crusoe_vm_nfs_rpc_count_total", (("nfs_operation", "read"), ("volume_id", GOLDEN_VOL)))
    assert scrape(ex)[key] == 637999


def test_this_hosts_real_mountstats_parses_cleanly(exporters: list[Exporter]) -> None:
    # This kernel has no NFS client (no nfs in /proc/filesystems), so a real
    # NFS mount cannot be made here; its real mountstats still exercises the
    # device-line handling of every local file system type without errors.
    real = Path("/proc/1/mountstats")
    text = real.read_text()
    assert text.startswith("device ")
    ex = start(exporters, Path("/proc"))
    s = scrape(ex)
    assert errors(s) == (0, 0, 0)
    nfs_blocks = sum(1 for line in text.splitlines() if line.startswith("device ") and " fstype nfs" in line)
    if nfs_blocks == 0:
        assert [k for k in s if k[0] not in ERROR_COUNTERS] == []


def test_a_fifo_as_mountstats_path_does_not_hang_start_up(exporters: list[Exporter], tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "mountstats.fifo"
    os.mkfifo(fifo)
    done = threading.Event()
    started: list[Exporter] = []

    def run() -> None:
        started.append(start(exporters, tmp_path, env={"MOUNTSTATS_PATH": str(fifo)}))
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert done.wait(5.0), "start-up blocked opening the FIFO"
    finally:
        if not done.is_set():  # release the blocked open so the test run can go on
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5.0)
    state, reason = record(started[0])
    assert state == "unsupported"
    assert str(fifo) in reason
