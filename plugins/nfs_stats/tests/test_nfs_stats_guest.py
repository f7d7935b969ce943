"""nfs_stats on a real NFS client: Debian's 6.1 kernel in the test guest, NFSv3 and NFSv4.2 with nconnect=4.

Every value the plugin exports for a mount is compared with the guest's
/proc/self/mountstats, parsed by the tests' own small parser
(helpers.guest_nfs), field positions taken from the kernel's
include/linux/sunrpc/metrics.h, fs/nfs/iostat.h and xprtsock.c.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.exporter_scrape import Series, value
from helpers.guest import GuestExporter
from helpers.guest_fixtures import MeasuredRun
from helpers.guest_nfs import MountBlock, NfsMount, parse_mountstats

pytestmark = pytest.mark.kernel_vm

MOUNTS = pytest.mark.parametrize("version", ["3", "4.2"], ids=["nfsv3_nconnect4", "nfsv4_2_nconnect4"])

#: Per-op line: ops trans major_timeouts bytes_sent bytes_recv queue rtt execute [errors].
OP_FIELDS = {"nfs_rpc_count_total": 0, "nfs_rpc_timeouts_total": 2, "nfs_bytes_sent_total": 3,
             "nfs_bytes_recv_total": 4, "nfs_rpc_rtt_ms_total": 6, "nfs_rpc_exe_ms_total": 7}
#: xprt tcp: srcport bind_count connect_count connect_time idle_time sends recvs bad_xids req_u bklog_u
#: max_slots sending_u pending_u.
XPRT_FIELDS = {"nfs_xprt_connect_count_total": 2, "nfs_xprt_sends_total": 5, "nfs_xprt_recvs_total": 6,
               "nfs_xprt_bad_xids_total": 7, "nfs_xprt_backlog_utilization": 9, "nfs_xprt_max_slots": 10}
XPRT_IDLE = 4
#: events: (enum nfs_stat_eventcounters) CONGESTIONWAIT 18, SHORTREAD 22, SHORTWRITE 23, DELAY 24.
EVENT_FIELDS = {"nfs_mount_congestion_wait_events_total": 18, "nfs_mount_short_read_events_total": 22,
                "nfs_mount_short_write_events_total": 23, "nfs_mount_delay_events_total": 24}
#: bytes: (enum nfs_stat_bytecounters) in order.
BYTES_FIELDS = {"nfs_mount_normal_read_bytes_total": 0, "nfs_mount_normal_write_bytes_total": 1,
                "nfs_mount_direct_read_bytes_total": 2, "nfs_mount_direct_write_bytes_total": 3,
                "nfs_mount_server_read_bytes_total": 4, "nfs_mount_server_write_bytes_total": 5,
                "nfs_mount_read_pages_total": 6, "nfs_mount_write_pages_total": 7}


def _counters(block: MountBlock) -> tuple[object, ...]:
    """Everything in the block except what moves with the clock alone (age, idle time)."""
    lanes = [(t, [n for i, n in enumerate(numbers) if i != XPRT_IDLE]) for t, numbers in block.xprts]
    return block.events, block.bytes, lanes, sorted(block.ops.items())


def _stable_scrape(ex: GuestExporter, device: str) -> tuple[Series, MountBlock, MountBlock]:
    """A scrape with the kernel file read just before and after it, retried until no counter moved between."""
    for _ in range(40):
        before = parse_mountstats(Path("/proc/self/mountstats").read_text())[device]
        series = ex.scrape(["nfs_stats"])
        after = parse_mountstats(Path("/proc/self/mountstats").read_text())[device]
        if _counters(before) == _counters(after):
            return series, before, after
        time.sleep(0.5)  # NFSv4 lease renewals run every few seconds
    raise AssertionError(f"{device}: mountstats never held still for one scrape")


def _exported(series: Series, volume: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {k: v for k, v in series.items() if dict(k[1]).get("volume_id") == volume
            and k[0].startswith("crusoe_vm_nfs_")}


@MOUNTS
def test_nfs_stats_matches_mountstats(
    version: str, nfs_mounts: dict[str, NfsMount], nfs_exporter: GuestExporter, nfs_measured: dict[str, MeasuredRun]
) -> None:
    nfs = nfs_mounts[version]
    series, block, after = _stable_scrape(nfs_exporter, nfs.device)
    vol = nfs.volume_id
    assert [t for t, _ in block.xprts] == ["tcp"] * 4, f"nconnect=4 should give four tcp lanes: {block.xprts}"
    assert block.ops, "no per-op statistics"
    expected: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

    def want(metric: str, number: float, **labels: str) -> None:
        expected[(f"crusoe_vm_{metric}", frozenset({"volume_id": vol, **labels}.items()))] = float(number)

    for op, numbers in block.ops.items():
        for metric, index in OP_FIELDS.items():
            want(metric, numbers[index], nfs_operation=op.lower())
    for lane, (_, numbers) in enumerate(block.xprts):
        for metric, index in XPRT_FIELDS.items():
            want(metric, numbers[index], xprt_idx=str(lane))
    want("nfs_rpc_backlog", sum(numbers[XPRT_FIELDS["nfs_xprt_backlog_utilization"]] for _, numbers in block.xprts))
    for metric, index in {**EVENT_FIELDS, **BYTES_FIELDS}.items():
        want(metric, (block.events if metric in EVENT_FIELDS else block.bytes)[index])

    exported = _exported(series, vol)
    clocked = {k: v for k, v in exported.items() if k[0] in ("crusoe_vm_nfs_mount_age_seconds",
                                                              "crusoe_vm_nfs_xprt_idle_seconds")}
    counted = {k: v for k, v in exported.items() if k not in clocked}
    missing = sorted(set(expected) - set(counted), key=str)
    extra = sorted(set(counted) - set(expected), key=str)
    assert not missing and not extra, f"series missing: {missing[:10]}; not from the kernel file: {extra[:10]}"
    wrong = {k: (counted[k], expected[k]) for k in expected if counted[k] != expected[k]}
    assert not wrong, f"{len(wrong)} of {len(expected)} values differ from mountstats (exported, kernel): {wrong}"

    # What moves with the clock alone: within the values read just before and after the scrape.
    assert block.age <= value(series, "crusoe_vm_nfs_mount_age_seconds", volume_id=vol) <= after.age
    for lane in range(4):
        idle = value(series, "crusoe_vm_nfs_xprt_idle_seconds", volume_id=vol, xprt_idx=str(lane))
        assert block.xprts[lane][1][XPRT_IDLE] <= idle <= after.xprts[lane][1][XPRT_IDLE]
    assert len(expected) > 100, "suspiciously few values compared"


@MOUNTS
def test_nfs_stats_bytes_grow_by_at_least_what_dd_wrote(version: str, nfs_measured: dict[str, MeasuredRun]) -> None:
    run = nfs_measured[version]
    vol = run.nfs.volume_id

    def delta(metric: str, **labels: str) -> float:
        return value(run.after.planned, f"crusoe_vm_{metric}", volume_id=vol, **labels) - value(
            run.before.planned, f"crusoe_vm_{metric}", volume_id=vol, **labels)

    written = run.result.dd_bytes
    assert delta("nfs_mount_normal_write_bytes_total") >= written
    assert delta("nfs_mount_server_write_bytes_total") >= written
    assert delta("nfs_bytes_sent_total", nfs_operation="write") >= written
    assert delta("nfs_mount_direct_read_bytes_total") >= run.result.fio_read_bytes
    assert delta("nfs_bytes_recv_total", nfs_operation="read") >= run.result.fio_read_bytes
    assert delta("nfs_rpc_count_total", nfs_operation="write") >= written / (1024 * 1024)
