"""Every mountstats fixture parsed, with its expected values asserted.

Expected numbers come from the seed's tests (reference §4.5-§4.7, §9), from
node_exporter's golden output for its fixture, and otherwise were read off
the fixture text by hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import cast

import pytest

from crusoe_metrics_exporter.plugins import nfs_stats
from crusoe_metrics_exporter.plugins.nfs_stats.collector import to_samples
from crusoe_metrics_exporter.plugins.nfs_stats.parser import (
    EVENTS,
    STATS,
    XPRT,
    ParseOptions,
    ParseResult,
    operation_keys,
    parse,
)
from crusoe_metrics_exporter.testing import PluginHarness

DATA = Path(__file__).parent / "data"
#: The default volume-id rule, as the targets service hands it to the plugin.
SEED_PATTERN = PluginHarness(nfs_stats).context.targets.volume_pattern
GOLDEN_VOL = "00000000-0000-0000-0000-000000000001"

Series = dict[tuple[str, tuple[str, ...]], float]


def run(
    name: str, *, ops: tuple[str, ...] = ("READ", "WRITE"), unmatched: str = "skip", enable_ids: bool = True
) -> tuple[Series, ParseResult]:
    options = ParseOptions(
        pattern=SEED_PATTERN if enable_ids else None,
        operations=operation_keys(list(ops)),
        label_unmatched_by_export=unmatched == "export",
    )
    result = parse((DATA / name).read_text(), options)
    series: Series = {}
    for s in to_samples(result):
        key = (s.metric, s.labels)
        assert key not in series, f"duplicate series {key}"
        value: object = s.value
        assert type(value) is int, s  # mountstats fields are integers
        series[key] = float(value)
    return series, result


def volumes_of(series: Series) -> set[str]:
    return {labels[0] for _, labels in series}


def no_errors(result: ParseResult) -> bool:
    return result.errors == {STATS: 0, XPRT: 0, EVENTS: 0}


# -- the seed's golden nconnect=16 sample -------------------------------------


def test_golden_nconnect16_rpc_stats() -> None:
    s, result = run("mountstats_real_nconnect16.txt")
    assert no_errors(result)
    read, write = (GOLDEN_VOL, "read"), (GOLDEN_VOL, "write")
    assert s["nfs_rpc_count_total", read] == 637414
    assert s["nfs_rpc_timeouts_total", read] == 0
    assert s["nfs_rpc_rtt_ms_total", read] == 1379025
    assert s["nfs_rpc_exe_ms_total", read] == 1526491
    assert s["nfs_bytes_sent_total", read] == 73940024
    assert s["nfs_bytes_recv_total", read] == 668458611456
    assert s["nfs_rpc_count_total", write] == 1410
    assert s["nfs_rpc_timeouts_total", write] == 0
    assert s["nfs_rpc_rtt_ms_total", write] == 27369
    assert s["nfs_rpc_exe_ms_total", write] == 28100
    assert s["nfs_bytes_sent_total", write] == 1465345072
    assert s["nfs_bytes_recv_total", write] == 225600
    assert s["nfs_rpc_backlog", (GOLDEN_VOL,)] == 0
    assert volumes_of(s) == {GOLDEN_VOL}


def test_golden_nconnect16_lanes() -> None:
    s, _ = run("mountstats_real_nconnect16.txt")
    lanes = {labels[1] for metric, labels in s if metric == "nfs_xprt_sends_total"}
    assert lanes == {str(i) for i in range(16)}
    lane0 = (GOLDEN_VOL, "0")
    assert s["nfs_xprt_sends_total", lane0] == 40611
    assert s["nfs_xprt_recvs_total", lane0] == 40611
    assert s["nfs_xprt_connect_count_total", lane0] == 2
    assert s["nfs_xprt_idle_seconds", lane0] == 0
    assert s["nfs_xprt_bad_xids_total", lane0] == 0
    assert s["nfs_xprt_backlog_utilization", lane0] == 0
    assert s["nfs_xprt_max_slots", lane0] == 11
    # The last lane, to prove indexes follow line order.
    assert s["nfs_xprt_sends_total", (GOLDEN_VOL, "15")] == 40449
    assert sum(1 for metric, _ in s if metric.startswith("nfs_xprt_")) == 16 * 7


def test_golden_nconnect16_mount_events() -> None:
    s, _ = run("mountstats_real_nconnect16.txt")
    vol = (GOLDEN_VOL,)
    assert s["nfs_mount_age_seconds", vol] == 245
    for name in ("congestion_wait", "short_read", "short_write", "delay"):
        assert s[f"nfs_mount_{name}_events_total", vol] == 0
    expected_bytes = {
        "normal_read_bytes": 0,
        "normal_write_bytes": 1626377887,
        "direct_read_bytes": 668377022464,
        "direct_write_bytes": 0,
        "server_read_bytes": 668377022464,
        "server_write_bytes": 1465170212,
        "read_pages": 0,
        "write_pages": 357718,
    }
    for name, value in expected_bytes.items():
        assert s[f"nfs_mount_{name}_total", vol] == value


# -- seed xprt collector fixtures ---------------------------------------------


def test_xprt_single() -> None:
    s, result = run("xprt_single_xprt.mountstats")
    assert no_errors(result)
    lane = ("aaaaaaaa-1111-2222-3333-444444444444", "0")
    assert s["nfs_xprt_connect_count_total", lane] == 22
    assert s["nfs_xprt_idle_seconds", lane] == 7
    assert s["nfs_xprt_sends_total", lane] == 200830
    assert s["nfs_xprt_recvs_total", lane] == 200829
    assert s["nfs_xprt_bad_xids_total", lane] == 5
    assert s["nfs_xprt_backlog_utilization", lane] == 3
    assert s["nfs_xprt_max_slots", lane] == 128
    assert s["nfs_rpc_backlog", lane[:1]] == 3


def test_xprt_nconnect4_dead_lane() -> None:
    s, _ = run("xprt_nconnect4_deadlane.mountstats")
    vol = "bbbbbbbb-1111-2222-3333-444444444444"
    assert [s["nfs_xprt_sends_total", (vol, str(i))] for i in range(4)] == [100, 200, 300, 0]
    assert s["nfs_xprt_connect_count_total", (vol, "3")] == 19785
    assert s["nfs_xprt_max_slots", (vol, "3")] == 2
    assert s["nfs_xprt_idle_seconds", (vol, "3")] == 999


def test_xprt_duplicate_blocks_take_the_maximum() -> None:
    s, _ = run("xprt_multi_mount_blocks.mountstats")
    vol = "cccccccc-1111-2222-3333-444444444444"
    assert s["nfs_xprt_sends_total", (vol, "0")] == 250
    assert s["nfs_xprt_connect_count_total", (vol, "0")] == 2
    assert [labels for metric, labels in s if metric == "nfs_xprt_sends_total"] == [(vol, "0")]


def test_xprt_malformed_lane_is_counted_and_the_good_lane_kept() -> None:
    s, result = run("xprt_malformed.mountstats")
    vol = "dddddddd-1111-2222-3333-444444444444"
    assert s["nfs_xprt_sends_total", (vol, "0")] == 999
    assert result.errors[XPRT] == 1
    assert not any(labels == (vol, "1") for _, labels in s)
    # One lane unreadable: a volume backlog over the remaining lanes would
    # look like a counter reset, so none is reported.
    assert ("nfs_rpc_backlog", (vol,)) not in s


def test_xprt_volume_id_extraction_seed_rule() -> None:
    s, _ = run("xprt_volume_id_extraction.mountstats")
    assert volumes_of(s) == {"eeeeeeee-1111-2222-3333-444444444444"}
    assert s["nfs_xprt_sends_total", ("eeeeeeee-1111-2222-3333-444444444444", "0")] == 75


def test_xprt_volume_id_extraction_export_fallback() -> None:
    s, _ = run("xprt_volume_id_extraction.mountstats", unmatched="export")
    assert s["nfs_xprt_sends_total", ("some.nfs.server:/exports/random", "0")] == 50
    assert s["nfs_xprt_sends_total", ("eeeeeeee-1111-2222-3333-444444444444", "0")] == 75


# -- seed mount-events collector fixtures -------------------------------------


def test_mount_events_all_lines() -> None:
    s, result = run("mountevents_all_lines.mountstats")
    assert no_errors(result)
    vol = ("aaaaaaaa-1111-2222-3333-444444444444",)
    assert s["nfs_mount_age_seconds", vol] == 12345
    assert s["nfs_mount_congestion_wait_events_total", vol] == 191
    assert s["nfs_mount_short_read_events_total", vol] == 231
    assert s["nfs_mount_short_write_events_total", vol] == 241
    assert s["nfs_mount_delay_events_total", vol] == 251
    names = ("normal_read", "normal_write", "direct_read", "direct_write", "server_read", "server_write")
    for i, name in enumerate(names):
        assert s[f"nfs_mount_{name}_bytes_total", vol] == 100 * (i + 1)
    assert s["nfs_mount_read_pages_total", vol] == 700
    assert s["nfs_mount_write_pages_total", vol] == 800


def test_mount_events_multi_block_maximum() -> None:
    s, _ = run("mountevents_multi_block.mountstats")
    vol = ("cccccccc-1111-2222-3333-444444444444",)
    assert s["nfs_mount_age_seconds", vol] == 250
    assert s["nfs_mount_delay_events_total", vol] == 200
    assert s["nfs_mount_direct_read_bytes_total", vol] == 6000
    assert s["nfs_mount_congestion_wait_events_total", vol] == 70
    assert volumes_of(s) == {vol[0]}


def test_mount_events_malformed() -> None:
    s, result = run("mountevents_malformed.mountstats")
    vol = ("dddddddd-1111-2222-3333-444444444444",)
    assert s == {("nfs_mount_age_seconds", vol): 42}
    assert result.errors == {STATS: 0, XPRT: 0, EVENTS: 2}


def test_mount_events_non_volume_mount() -> None:
    s, result = run("mountevents_non_volume_mount.mountstats")
    assert s == {}
    assert no_errors(result)
    s, _ = run("mountevents_non_volume_mount.mountstats", unmatched="export")
    assert s["nfs_mount_age_seconds", ("some.nfs.server:/exports/other",)] == 999


# -- the unmerged branch's nfs-stats fixtures ---------------------------------


def test_unmerged_single_volume() -> None:
    s, result = run("unmerged_nfsstats_single_volume.mountstats")
    assert no_errors(result)
    read, write = ("abc-123-def", "read"), ("abc-123-def", "write")
    assert (s["nfs_rpc_count_total", read], s["nfs_rpc_rtt_ms_total", read], s["nfs_rpc_exe_ms_total", read]) == (
        500,
        250,
        300,
    )
    assert (s["nfs_rpc_count_total", write], s["nfs_rpc_rtt_ms_total", write], s["nfs_rpc_exe_ms_total", write]) == (
        300,
        150,
        200,
    )
    assert s["nfs_bytes_sent_total", read] == 1000
    assert s["nfs_bytes_recv_total", read] == 2000
    # No xprt lines: no backlog series rather than an invented zero.
    assert ("nfs_rpc_backlog", ("abc-123-def",)) not in s


def test_unmerged_multiple_volumes() -> None:
    s, _ = run("unmerged_nfsstats_multiple_volumes.mountstats")
    assert s["nfs_rpc_count_total", ("vol-aaa", "read")] == 100
    assert s["nfs_rpc_count_total", ("vol-aaa", "write")] == 200
    assert s["nfs_rpc_count_total", ("vol-bbb", "read")] == 300
    assert s["nfs_rpc_exe_ms_total", ("vol-bbb", "read")] == 420
    assert ("nfs_rpc_count_total", ("vol-bbb", "write")) not in s


def test_unmerged_zero_ops_reported_as_zero() -> None:
    # The seed skipped ops == 0; we report the zero so rate() sees the first
    # operations instead of a series that appears mid-flight.
    s, result = run("unmerged_nfsstats_zero_ops.mountstats")
    assert no_errors(result)
    assert s["nfs_rpc_count_total", ("abc-123", "read")] == 0
    assert s["nfs_rpc_count_total", ("abc-123", "write")] == 100


def test_unmerged_non_nfs_device_ignored() -> None:
    for unmatched in ("skip", "export"):
        s, result = run("unmerged_nfsstats_non_nfs_device.mountstats", unmatched=unmatched)
        assert s == {}
        assert no_errors(result)


def test_unmerged_short_op_line_is_counted() -> None:
    # The seed dropped it silently; a truncated line is an error we count.
    s, result = run("unmerged_nfsstats_short_op_line.mountstats")
    assert result.errors[STATS] == 1
    assert ("nfs_rpc_count_total", ("abc-123", "read")) not in s
    assert s["nfs_rpc_count_total", ("abc-123", "write")] == 100


@pytest.mark.parametrize("name", ["bad_ops", "bad_rtt", "bad_exe"])
def test_unmerged_non_numeric_fields(name: str) -> None:
    s, result = run(f"unmerged_nfsstats_{name}.mountstats")
    assert result.errors == {STATS: 1, XPRT: 0, EVENTS: 0}
    assert s == {}


# -- prometheus/procfs samples -------------------------------------------------


def test_procfs_nfs4_statvers11_eight_field_ops_and_near_2_64() -> None:
    s, result = run("procfs__proc_26231_mountstats.txt", ops=("READ", "WRITE", "ACCESS"), unmatched="export")
    assert no_errors(result)
    vol = "192.168.1.1:/srv/test"
    # rootfs/sysfs/proc/ext4 blocks yield nothing.
    assert volumes_of(s) == {vol}
    assert s["nfs_rpc_count_total", (vol, "read")] == 1298
    assert s["nfs_bytes_recv_total", (vol, "read")] == 1210292152
    assert s["nfs_rpc_rtt_ms_total", (vol, "read")] == 79386
    assert s["nfs_rpc_exe_ms_total", (vol, "read")] == 79407
    assert s["nfs_rpc_count_total", (vol, "write")] == 0
    # ACCESS carries a queue time of 18446743919241604546 (a wrapped u64):
    # the line must still parse, and its large counters must be exact.
    assert s["nfs_rpc_count_total", (vol, "access")] == 2927395007
    assert s["nfs_bytes_sent_total", (vol, "access")] == 526931094212
    assert s["nfs_rpc_exe_ms_total", (vol, "access")] == 1953587717
    lane = (vol, "0")
    assert s["nfs_xprt_sends_total", lane] == 6428
    assert s["nfs_xprt_idle_seconds", lane] == 11
    assert s["nfs_xprt_max_slots", lane] == 24
    assert s["nfs_mount_age_seconds", (vol,)] == 13968
    assert s["nfs_mount_normal_read_bytes_total", (vol,)] == 1207640230
    assert s["nfs_mount_read_pages_total", (vol,)] == 295483


def test_procfs_extended_ops_nine_fields_nfs41() -> None:
    s, result = run(
        "procfs_mountstats_test__extendedOpsExampleMountstats.txt", ops=("READ", "WRITE", "COMMIT"), unmatched="export"
    )
    assert no_errors(result)
    vol = "fs.example.com:/volume4/apps/home-automation/node-red-data"
    assert volumes_of(s) == {vol}
    assert s["nfs_rpc_count_total", (vol, "read")] == 34096
    assert s["nfs_rpc_exe_ms_total", (vol, "read")] == 467945
    assert s["nfs_rpc_count_total", (vol, "write")] == 322308
    assert s["nfs_bytes_sent_total", (vol, "write")] == 39161277084
    assert s["nfs_rpc_rtt_ms_total", (vol, "write")] == 10139998
    assert s["nfs_rpc_count_total", (vol, "commit")] == 12541
    lane = (vol, "0")
    assert s["nfs_xprt_connect_count_total", lane] == 2
    assert s["nfs_xprt_idle_seconds", lane] == 1
    assert s["nfs_xprt_sends_total", lane] == 938505
    assert s["nfs_xprt_recvs_total", lane] == 938504
    assert s["nfs_xprt_max_slots", lane] == 32
    assert s["nfs_mount_age_seconds", (vol,)] == 83520
    assert s["nfs_mount_normal_write_bytes_total", (vol,)] == 39056395530
    # Without the export fallback this non-/volumes/ mount is not reported.
    assert run("procfs_mountstats_test__extendedOpsExampleMountstats.txt")[0] == {}


def test_procfs_rdma_nconnect16() -> None:
    s, result = run("procfs_mountstats_test__extendedRDMAExampleALLMountstats.txt", unmatched="export")
    assert no_errors(result)
    vol = "<nfsserver>:<nfsmount>"
    lanes = sorted(int(labels[1]) for metric, labels in s if metric == "nfs_xprt_sends_total")
    assert lanes == list(range(16))
    lane0 = (vol, "0")
    assert s["nfs_xprt_connect_count_total", lane0] == 5808
    assert s["nfs_xprt_sends_total", lane0] == 494490723
    assert s["nfs_xprt_recvs_total", lane0] == 494490687
    assert s["nfs_xprt_bad_xids_total", lane0] == 36
    assert s["nfs_xprt_backlog_utilization", lane0] == 1282789
    # RDMA prints no slot-table high-water mark: no series rather than a fake 0.
    assert not any(metric == "nfs_xprt_max_slots" for metric, _ in s)
    # Volume backlog = sum over the 16 lanes (the seed took the largest lane).
    assert s["nfs_rpc_backlog", (vol,)] == 4076596918
    assert s["nfs_mount_age_seconds", (vol,)] == 1270876
    assert s["nfs_mount_normal_read_bytes_total", (vol,)] == 3104202770327296


def test_procfs_multiline_impl_id() -> None:
    s, result = run("procfs_mountstats_test__multiline_impl_id.txt", unmatched="export")
    assert no_errors(result)
    assert s == {("nfs_mount_age_seconds", ("192.168.0.1:/srv",)): 1234567}


# -- node_exporter's fixture against node_exporter's own expected output ------

_PROM_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def _node_exporter_expected() -> dict[tuple[str, str, str], float]:
    """(metric, protocol, operation-or-transport) -> value from e2e-output."""
    out: dict[tuple[str, str, str], float] = {}
    for line in (DATA / "node_exporter__e2e-output__mountstats_expected.prom").read_text().splitlines():
        match = _PROM_LINE.match(line)
        if match is None:
            continue
        labels = dict(part.split("=", 1) for part in match["labels"].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        extra = labels.get("operation", labels.get("transport", ""))
        out[match["name"].removeprefix("node_mountstats_nfs_"), labels["protocol"], extra] = float(match["value"])
    return out


def test_node_exporter_fixture_matches_node_exporter_output() -> None:
    expected = _node_exporter_expected()
    s, result = run(
        "node_exporter__collector_fixtures_proc_10_mountstats.txt",
        ops=("NULL", "READ", "WRITE", "ACCESS"),
        unmatched="export",
    )
    assert no_errors(result)
    vol = "192.168.1.1:/srv/test"
    # Three blocks of one export (tcp, tcp dupe, udp) merge into one volume.
    assert volumes_of(s) == {vol}
    op_map = {
        "nfs_rpc_count_total": ("operations_requests_total", 1.0),
        "nfs_rpc_timeouts_total": ("operations_major_timeouts_total", 1.0),
        "nfs_bytes_sent_total": ("operations_sent_bytes_total", 1.0),
        "nfs_bytes_recv_total": ("operations_received_bytes_total", 1.0),
        "nfs_rpc_rtt_ms_total": ("operations_response_time_seconds_total", 1000.0),
        "nfs_rpc_exe_ms_total": ("operations_request_time_seconds_total", 1000.0),
    }
    for op in ("NULL", "READ", "WRITE", "ACCESS"):
        for ours, (theirs, scale) in op_map.items():
            # ACCESS is only in the dupe/udp blocks, which node_exporter
            # reports under protocol="udp".
            want = expected[theirs, "udp", op] * scale
            assert math.isclose(s[ours, (vol, op.lower())], want, rel_tol=1e-9), (ours, op)
    lane_map = {
        "nfs_xprt_sends_total": "transport_sends_total",
        "nfs_xprt_recvs_total": "transport_receives_total",
        "nfs_xprt_bad_xids_total": "transport_bad_transaction_ids_total",
        "nfs_xprt_backlog_utilization": "transport_backlog_queue_total",
        "nfs_xprt_max_slots": "transport_maximum_rpc_slots",
        "nfs_xprt_connect_count_total": "transport_connect_total",
        "nfs_xprt_idle_seconds": "transport_idle_time_seconds",
    }
    for ours, theirs in lane_map.items():
        assert s[ours, (vol, "0")] == expected[theirs, "tcp", "0"], ours
    mount_map = {
        "nfs_mount_age_seconds": "age_seconds_total",
        "nfs_mount_normal_read_bytes_total": "read_bytes_total",
        "nfs_mount_normal_write_bytes_total": "write_bytes_total",
        "nfs_mount_direct_read_bytes_total": "direct_read_bytes_total",
        "nfs_mount_direct_write_bytes_total": "direct_write_bytes_total",
        "nfs_mount_server_read_bytes_total": "total_read_bytes_total",
        "nfs_mount_server_write_bytes_total": "total_write_bytes_total",
        "nfs_mount_read_pages_total": "read_pages_total",
        "nfs_mount_write_pages_total": "write_pages_total",
        "nfs_mount_short_read_events_total": "event_short_read_total",
        "nfs_mount_short_write_events_total": "event_short_write_total",
        "nfs_mount_delay_events_total": "event_jukebox_delay_total",
    }
    for ours, theirs in mount_map.items():
        assert s[ours, (vol,)] == expected[theirs, "tcp", ""], ours


def test_volume_ids_disabled_label_every_nfs_mount_by_export() -> None:
    s, _ = run("xprt_volume_id_extraction.mountstats", unmatched="export", enable_ids=False)
    assert volumes_of(s) == {
        "some.nfs.server:/exports/random",
        "nfs.example.com:/volumes/eeeeeeee-1111-2222-3333-444444444444",
    }
    s, _ = run("xprt_volume_id_extraction.mountstats", unmatched="skip", enable_ids=False)
    assert s == {}


# -- format variants no fixture covers (constructed from the kernel's formats) --


def _parse_text(text: str) -> tuple[Series, ParseResult]:
    options = ParseOptions(SEED_PATTERN, operation_keys(["READ", "WRITE"]), False)
    result = parse(text, options)
    return {(s.metric, s.labels): float(cast(float, s.value)) for s in to_samples(result)}, result


def _block(statvers: str, *xprt: str) -> str:
    lines = [f"device srv:/volumes/v1 mounted on /mnt with fstype nfs statvers={statvers}"]
    lines += [f"\txprt:\t{x}" for x in xprt]
    return "\n".join(lines) + "\n"


def test_statvers_10_tcp_and_udp_field_counts() -> None:
    s, result = _parse_text(_block("1.0", "tcp 1 2 3 4 5 6 7 8 9 10", "udp 1 2 3 4 5 6 7"))
    assert no_errors(result)
    assert s["nfs_xprt_sends_total", ("v1", "0")] == 6
    assert s["nfs_xprt_backlog_utilization", ("v1", "0")] == 10
    # statvers 1.0 has no slot high-water mark; UDP has no connection fields.
    assert ("nfs_xprt_max_slots", ("v1", "0")) not in s
    assert s["nfs_xprt_sends_total", ("v1", "1")] == 3
    assert s["nfs_xprt_backlog_utilization", ("v1", "1")] == 7
    assert ("nfs_xprt_connect_count_total", ("v1", "1")) not in s
    assert s["nfs_rpc_backlog", ("v1",)] == 17


def test_statvers_11_udp_has_max_slots() -> None:
    s, result = _parse_text(_block("1.1", "udp 1 2 3 4 5 6 7 8 9 10"))
    assert no_errors(result)
    assert s["nfs_xprt_max_slots", ("v1", "0")] == 8
    assert s["nfs_xprt_recvs_total", ("v1", "0")] == 4


@pytest.mark.parametrize(
    "line",
    [
        "tcp 1 2 3 4 5 6 7 8 9 10 11 12",  # 1.1 tcp needs 13
        "udp 1 2 3 4 5 6 7 8 9",  # 1.1 udp needs 10
        "rdma " + " ".join(["1"] * 19),  # rdma needs 20
        "tcpx 1 2 3 4 5 6 7 8 9 10 11 12 13",  # unknown transport
        "tcp",
    ],
)
def test_short_or_unknown_xprt_lines_are_errors(line: str) -> None:
    s, result = _parse_text(_block("1.1", line, "tcp 1 2 3 4 5 6 7 8 9 10 11 12 13"))
    assert result.errors == {STATS: 0, XPRT: 1, EVENTS: 0}
    # The good lane keeps index 1: indexes follow line positions.
    assert s["nfs_xprt_sends_total", ("v1", "1")] == 6
    assert ("nfs_xprt_sends_total", ("v1", "0")) not in s


def test_future_statvers_and_extra_fields_are_accepted() -> None:
    s, result = _parse_text(_block("1.2", "tcp 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"))
    assert no_errors(result)
    assert s["nfs_xprt_max_slots", ("v1", "0")] == 11


def test_counters_at_the_u64_limit() -> None:
    top = 2**64 - 1
    text = _block("1.1", f"tcp 1 2 3 4 5 {top} {top} 0 0 {top} 2 0 0") + f"\t        READ: {top} 1 0 1 1 1 1 1 0\n"
    s, result = _parse_text(text)
    assert no_errors(result)
    assert s["nfs_xprt_sends_total", ("v1", "0")] == float(top)
    assert s["nfs_rpc_count_total", ("v1", "read")] == float(top)
    _, result = _parse_text(text.replace(str(top), str(top + 1), 1))
    assert result.errors[XPRT] == 1


def test_malformed_device_line_skips_only_that_block() -> None:
    text = "device srv:/volumes/bad mounted at /x with fstype nfs\n\tage:\t5\n" + _block(
        "1.1", "tcp 1 2 3 4 5 6 7 8 9 10 11 12 13"
    )
    s, result = _parse_text(text)
    assert result.errors == {STATS: 1, XPRT: 0, EVENTS: 0}
    assert {labels[0] for _, labels in s} == {"v1"}


def test_huge_volume_id_is_refused() -> None:
    text = _block("1.1", "tcp 1 2 3 4 5 6 7 8 9 10 11 12 13").replace("v1", "v" * 600)
    s, result = _parse_text(text)
    assert s == {}
    assert result.errors[STATS] == 1


def test_volume_id_is_taken_from_the_decoded_device_like_target_discovery() -> None:
    # mountstats octal-escapes a space in the device (\040) as /proc/<pid>/mounts
    # does; nfs_latency gets its volume id from the decoded mounts line, so
    # both plugins must label this volume "vol a".
    from crusoe_metrics_exporter.sdk import volume_id
    from crusoe_metrics_exporter.targets.mounts import parse_mounts

    device = r"srv:/volumes/vol\040a"
    s, result = _parse_text(
        f"device {device} mounted on /mnt with fstype nfs statvers=1.1\n"
        "\tper-op statistics\n"
        "\t        READ: 1 1 0 2 3 0 4 5 0\n"
    )
    assert no_errors(result)
    (line,), _ = parse_mounts(f"{device} /mnt nfs rw,addr=10.0.0.1 0 0\n")
    assert volume_id(line.device, SEED_PATTERN) == "vol a"
    assert s["nfs_rpc_count_total", ("vol a", "read")] == 1
