"""disk_stats on every diskstats fixture, with the expected values asserted."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import pytest

from crusoe_metrics_exporter.plugins.disk_stats.collector import DiskStatsCollector
from crusoe_metrics_exporter.plugins.disk_stats.parser import parse_diskstats
from crusoe_metrics_exporter.sdk import DeviceOptions, PluginContext, Sample
from crusoe_metrics_exporter.testing import error_totals

ERRORS = "disk_stats_collection_errors_total"
NODE_EXPORTER_DEFAULT_EXCLUDE = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"


def run(make_ctx: Any, tmp_path: Path, text: bytes, options: dict[str, Any] | None = None
        ) -> tuple[dict[tuple[str, str], float], int, PluginContext[DeviceOptions]]:
    (tmp_path / "diskstats").write_bytes(text)
    ctx = make_ctx(tmp_path, options)
    collector = DiskStatsCollector(ctx)
    collector.start()
    samples = collector.collect()
    values = {(s.metric, s.labels[0]): float(s.value) for s in samples}  # type: ignore[arg-type]
    assert len(values) == len(samples), "one series per (metric, device)"
    return values, error_totals(ctx)[ERRORS], ctx


def seed_view(values: dict[tuple[str, str], float]) -> dict[str, tuple[float, float, float, float]]:
    """The seed's four counters per device: reads, read ms, writes, write ms."""
    devices = sorted({d for (_, d) in values})
    return {
        d: (
            values[("disk_reads_completed_total", d)],
            values[("disk_read_time_ms_total", d)],
            values[("disk_writes_completed_total", d)],
            values[("disk_write_time_ms_total", d)],
        )
        for d in devices
    }


# -- the seed's own cases (unmerged disk-stats-collector_test.go) -----------------

@pytest.mark.parametrize(
    ("fixture", "expected", "errors"),
    [
        ("unmerged_diskstats_single_vda.diskstats", {"vda": (1000, 500, 2000, 800)}, 0),
        ("unmerged_diskstats_vda_vdb.diskstats", {"vda": (100, 50, 200, 80), "vdb": (300, 150, 400, 200)}, 0),
        ("unmerged_diskstats_with_partition.diskstats", {"vda": (100, 50, 200, 80)}, 0),
        ("unmerged_diskstats_non_vd.diskstats", {}, 0),
        ("unmerged_diskstats_short_lines.diskstats", {}, 2),
        ("unmerged_diskstats_unparseable.diskstats", {}, 1),
    ],
)
def test_seed_fixtures(make_ctx: Any, tmp_path: Path, data_dir: Path, fixture: str,
                       expected: dict[str, tuple[int, ...]], errors: int) -> None:
    values, error_total, _ = run(make_ctx, tmp_path, (data_dir / fixture).read_bytes())
    assert seed_view(values) == expected
    assert error_total == errors
    # 14-field records carry exactly the 11 pre-4.18 counters, no discard/flush series.
    for device in expected:
        assert ("disk_discards_completed_total", device) not in values
        assert values[("disk_io_now", device)] == 0


# -- prometheus/procfs: 14-, 18- and 20-field records mixed ---------------------

def test_procfs_fixture_all_formats(make_ctx: Any, tmp_path: Path, data_dir: Path) -> None:
    values, errors, _ = run(make_ctx, tmp_path, (data_dir / "procfs__proc_diskstats.txt").read_bytes(),
                            {"device_include": "", "device_exclude": ""})
    assert errors == 0
    devices = {d for (_, d) in values}
    assert len(devices) == 52  # every line, ram0 to sdc2
    # 14 fields (sda): 11 counters.
    assert values[("disk_reads_completed_total", "sda")] == 25354637
    assert values[("disk_reads_merged_total", "sda")] == 34367663
    assert values[("disk_stats_read_bytes_total", "sda")] == 1003346126 * 512
    assert values[("disk_read_time_ms_total", "sda")] == 18492372
    assert values[("disk_writes_completed_total", "sda")] == 28444756
    assert values[("disk_writes_merged_total", "sda")] == 11134226
    assert values[("disk_stats_written_bytes_total", "sda")] == 505697032 * 512
    assert values[("disk_write_time_ms_total", "sda")] == 63877960
    assert values[("disk_io_now", "sda")] == 0
    assert values[("disk_io_time_seconds_total", "sda")] == pytest.approx(9653.880)
    assert values[("disk_io_time_weighted_seconds_total", "sda")] == pytest.approx(82621.804)
    assert ("disk_discards_completed_total", "sda") not in values
    # 18 fields (sdb): discard counters, no flush.
    assert values[("disk_discards_completed_total", "sdb")] == 68851
    assert values[("disk_discards_merged_total", "sdb")] == 0
    assert values[("disk_discarded_bytes_total", "sdb")] == 1925173784 * 512
    assert values[("disk_discard_time_seconds_total", "sdb")] == pytest.approx(11.130)
    assert ("disk_flush_requests_total", "sdb") not in values
    # 20 fields (sdc): flush counters too.
    assert values[("disk_flush_requests_total", "sdc")] == 127
    assert values[("disk_flush_time_seconds_total", "sdc")] == pytest.approx(0.182)
    assert values[("disk_flush_requests_total", "sdc2")] == 0
    per_device: defaultdict[str, int] = defaultdict(int)
    for (_, d) in values:
        per_device[d] += 1
    assert per_device["sda"] == 11 and per_device["sdb"] == 15 and per_device["sdc"] == 17


def test_procfs_fixture_default_filter_keeps_the_whole_virtio_disk(make_ctx: Any, tmp_path: Path,
                                                                    data_dir: Path) -> None:
    values, errors, _ = run(make_ctx, tmp_path, (data_dir / "procfs__proc_diskstats.txt").read_bytes())
    assert errors == 0
    assert seed_view(values) == {"vda": (1775784, 8655768, 6038856, 2069221364)}


# -- node_exporter: our values equal its golden output on its own fixture -------

_PROM_LINE = re.compile(r'^(node_disk_\w+)\{device="([^"]+)"\} (\S+)$')
#: node_exporter metric -> (our metric, factor from ours to theirs)
_NODE_EQUIVALENT = {
    "node_disk_reads_completed_total": ("disk_reads_completed_total", 1.0),
    "node_disk_reads_merged_total": ("disk_reads_merged_total", 1.0),
    "node_disk_read_bytes_total": ("disk_stats_read_bytes_total", 1.0),
    "node_disk_read_time_seconds_total": ("disk_read_time_ms_total", 0.001),
    "node_disk_writes_completed_total": ("disk_writes_completed_total", 1.0),
    "node_disk_writes_merged_total": ("disk_writes_merged_total", 1.0),
    "node_disk_written_bytes_total": ("disk_stats_written_bytes_total", 1.0),
    "node_disk_write_time_seconds_total": ("disk_write_time_ms_total", 0.001),
    "node_disk_io_now": ("disk_io_now", 1.0),
    "node_disk_io_time_seconds_total": ("disk_io_time_seconds_total", 1.0),
    "node_disk_io_time_weighted_seconds_total": ("disk_io_time_weighted_seconds_total", 1.0),
    "node_disk_discards_completed_total": ("disk_discards_completed_total", 1.0),
    "node_disk_discards_merged_total": ("disk_discards_merged_total", 1.0),
    "node_disk_discarded_sectors_total": ("disk_discarded_bytes_total", 1 / 512),  # they export sectors
    "node_disk_discard_time_seconds_total": ("disk_discard_time_seconds_total", 1.0),
    "node_disk_flush_requests_total": ("disk_flush_requests_total", 1.0),
    "node_disk_flush_requests_time_seconds_total": ("disk_flush_time_seconds_total", 1.0),
}


def test_matches_node_exporter_golden_output(make_ctx: Any, tmp_path: Path, data_dir: Path) -> None:
    expected: dict[tuple[str, str], tuple[str, float, float]] = {}
    for line in (data_dir / "node_exporter__e2e-output__diskstats_expected.prom").read_text().splitlines():
        m = _PROM_LINE.match(line)
        if m and m.group(1) in _NODE_EQUIVALENT:
            ours, factor = _NODE_EQUIVALENT[m.group(1)]
            expected[(ours, m.group(2))] = (m.group(1), float(m.group(3)), factor)
    assert len(expected) == 15 * 11 + 2 * 4 + 2  # 15 devices, 2 with discards, 1 with flushes

    values, errors, _ = run(
        make_ctx, tmp_path, (data_dir / "node_exporter__collector_fixtures_proc_diskstats.txt").read_bytes(),
        {"device_include": "", "device_exclude": NODE_EXPORTER_DEFAULT_EXCLUDE},
    )
    assert errors == 0
    assert set(values) == set(expected), "same devices and same metrics per device as node_exporter"
    for key, (theirs, value, factor) in expected.items():
        assert math.isclose(values[key] * factor, value, rel_tol=1e-12), (key, theirs)


# -- this machine's kernel -----------------------------------------------------

def _sysfs_stat(device: str) -> list[int]:
    return [int(x) for x in Path(f"/sys/block/{device}/stat").read_text().split()]


def test_real_kernel_vda(make_ctx: Any) -> None:
    if not Path("/sys/block/vda").exists():
        pytest.skip("LOUD SKIP: this machine has no virtio disk vda; the real-kernel check cannot run")
    before = _sysfs_stat("vda")
    ctx = make_ctx(Path("/proc"))
    samples = DiskStatsCollector(ctx).collect()
    after = _sysfs_stat("vda")
    values = {(s.metric, s.labels[0]): float(cast(float, s.value)) for s in samples}
    assert error_totals(ctx)[ERRORS] == 0
    assert {d for (_, d) in values} == {p.name for p in Path("/sys/block").glob("vd*")}
    # /sys/block/vda/stat holds the same kernel counters (without major/minor/name):
    # ours must lie between a read just before and one just after.
    for metric, index in (("disk_reads_completed_total", 0), ("disk_read_time_ms_total", 3),
                          ("disk_writes_completed_total", 4), ("disk_write_time_ms_total", 7)):
        assert before[index] <= values[(metric, "vda")] <= after[index], metric
    assert values[("disk_reads_completed_total", "vda")] > 0


def test_parser_reports_major_minor(data_dir: Path) -> None:
    result = parse_diskstats((data_dir / "procfs__proc_diskstats.txt").read_bytes(), lambda n: n == "nvme0n1p2")
    assert [(r.major, r.minor, r.name, len(r.counters)) for r in result.records] == [(259, 2, "nvme0n1p2", 11)]


def test_sample_shape(make_ctx: Any, tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "diskstats").write_bytes((data_dir / "unmerged_diskstats_single_vda.diskstats").read_bytes())
    samples = DiskStatsCollector(make_ctx(tmp_path)).collect()
    assert samples[0] == Sample("disk_reads_completed_total", ("vda",), 1000.0)
    assert all(isinstance(s.value, float) for s in samples)
