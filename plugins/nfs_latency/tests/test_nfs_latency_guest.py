"""nfs_latency on a real NFS client: Debian's 6.1 kernel in the test guest, NFSv3 and NFSv4.2 with nconnect=4.

6.1 has no sock:sock_send_length / sock_recv_length tracepoints, so feature
detection attaches the send and receive hooks by kprobe; a second exporter
forces every hook onto its kprobe variant. With the NFS client loaded, the
planned exporter times NFS requests on the RPC layer (one per RPC, per
mount; test_rpc_latency_guest.py checks it against mountstats op by op); the
all-kprobe exporter keeps them TCP-level (``latency_source = "tcp"``) so its
send/receive kprobes are what counts the same real NFS traffic to
127.0.0.1:2049.
"""

from __future__ import annotations

import time

import pytest
from helpers.exporter_scrape import Series, before_traffic, value
from helpers.guest import GuestExporter, attachments, kernel_release
from helpers.guest_fixtures import MeasuredRun, take_snapshot
from helpers.guest_nfs import NfsMount, run_workload_checked, total_rpcs
from helpers.guest_nfs import netem_delay as netem

from crusoe_metrics_exporter.ebpf import Kprobe, attach_plan, kernel, plan_details
from crusoe_metrics_exporter.plugins._tcptrace.tracer import plan_spec

pytestmark = pytest.mark.kernel_vm

MOUNTS = pytest.mark.parametrize("version", ["3", "4.2"], ids=["nfsv3_nconnect4", "nfsv4_2_nconnect4"])
BASE = {"protocol": "tcp", "operation": "nfs"}
ALL_KPROBES = {"kprobe:tcp_sendmsg", "kretprobe:tcp_sendmsg", "kprobe:tcp_cleanup_rbuf",
               "kprobe:tcp_retransmit_skb", "kprobe:tcp_v4_destroy_sock"}
NETEM_MS = 20


#: Operations the kernel sends on the server-wide client, which mountstats adds to every mount of that server
#: but no mount's RPC client performs (see docs/nfs-rpc-latency.md).
SERVER_WIDE = frozenset({"RENEW", "SEQUENCE", "EXCHANGE_ID", "CREATE_SESSION", "DESTROY_SESSION",
                         "DESTROY_CLIENTID", "RECLAIM_COMPLETE", "GET_LEASE_TIME", "BIND_CONN_TO_SESSION"})


def volume(nfs_mounts: dict[str, NfsMount]) -> str:
    """At the TCP level both mounts use the one server address, so its traffic is labelled with both volumes."""
    return "+".join(sorted(n.volume_id for n in nfs_mounts.values()))


def own_rpcs(run: MeasuredRun, nfs: NfsMount) -> int:
    """RPCs of the mount's own RPC client in the run: mountstats' per-op counts less the server-wide ones."""
    before, after = run.before.blocks[nfs.device], run.after.blocks[nfs.device]
    return sum(numbers[0] - before.ops.get(op, [0])[0] for op, numbers in after.ops.items() if op not in SERVER_WIDE)


def requests(series: Series, vol: str) -> float:
    """Requests counted for ``vol`` (0 before its first request: no series yet, idle_series being off)."""
    return before_traffic(series, "crusoe_vm_nfs_requests_total", volume_id=vol, **BASE)


def test_nfs_latency_attaches_by_kprobe_on_6_1(nfs_exporter: GuestExporter) -> None:
    assert kernel_release().startswith("6.1."), kernel_release()
    plan = attach_plan(plan_spec("nfs_latency"))
    details = nfs_exporter.details["nfs_latency"]
    for key, text in plan_details(plan).items():
        assert details.get(key) == text, f"{key}: plugin says {details.get(key)!r}, feature detection {text!r}"
    # This kernel lacks the socket tracepoints, so detection must have chosen kprobes for send and receive.
    assert kernel.tracepoint_id("sock", "sock_send_length") is None
    assert kernel.tracepoint_id("sock", "sock_recv_length") is None
    assert isinstance(plan["send"], Kprobe) and isinstance(plan["recv"], Kprobe), plan
    ours, seen = attachments(nfs_exporter, "nfs_latency")
    assert ours == seen, f"runtime attached {ours}, the kernel (bpftool perf) lists {seen}"
    assert {"kprobe:tcp_sendmsg", "kretprobe:tcp_sendmsg", "kprobe:tcp_cleanup_rbuf"} <= seen


def test_nfs_latency_attaches_every_hook_by_kprobe_on_6_1(nfs_exporter_kprobes: GuestExporter) -> None:
    ours, seen = attachments(nfs_exporter_kprobes, "nfs_latency")
    assert ours == seen == ALL_KPROBES


@MOUNTS
def test_nfs_latency_counts_real_traffic(
    version: str, nfs_mounts: dict[str, NfsMount], nfs_measured: dict[str, MeasuredRun]
) -> None:
    run = nfs_measured[version]
    # TCP level (all-kprobe exporter): exchanges on the server's connections, labelled with both volumes
    vol = volume(nfs_mounts)
    rpcs = sum(run.block_delta(n.device, total_rpcs) for n in nfs_mounts.values())
    counted = requests(run.after.kprobes, vol) - requests(run.before.kprobes, vol)
    assert 0 < counted <= rpcs, f"all-kprobe: {counted} exchanges for {rpcs} RPCs on the {run.nfs.name} workload"
    latency = value(run.after.kprobes, "crusoe_vm_nfs_latency_seconds", volume_id=vol, **BASE) - before_traffic(
        run.before.kprobes, "crusoe_vm_nfs_latency_seconds", volume_id=vol, **BASE)
    assert latency > 0
    # RPC layer (planned exporter): one per RPC of the busy mount, under its own volume id
    planned = requests(run.after.planned, run.nfs.volume_id) - requests(run.before.planned, run.nfs.volume_id)
    assert planned == own_rpcs(run, run.nfs) > 0
    latency = value(run.after.planned, "crusoe_vm_nfs_latency_seconds", volume_id=run.nfs.volume_id, **BASE) - (
        before_traffic(run.before.planned, "crusoe_vm_nfs_latency_seconds", volume_id=run.nfs.volume_id, **BASE))
    assert latency > 0


def test_nfs_latency_counts_one_per_rpc_where_tcp_counted_exchanges(
    nfs_mounts: dict[str, NfsMount], nfs_measured: dict[str, MeasuredRun]
) -> None:
    """The RPC layer counts every RPC (mountstats' per-op counts, per mount); the TCP level, as the seed, fewer.

    With many RPCs in flight per connection (fio iodepth 8 on four lanes) the
    TCP level merges pipelined RPCs into one send/receive "request"; the
    planned exporter, on the RPC layer, counts exactly the RPCs of each mount.
    """
    vol = volume(nfs_mounts)
    exchanges = rpcs = per_rpc = own = 0
    for run in nfs_measured.values():
        exchanges += int(requests(run.after.kprobes, vol) - requests(run.before.kprobes, vol))
        rpcs += sum(run.block_delta(n.device, total_rpcs) for n in nfs_mounts.values())
        for nfs in nfs_mounts.values():
            per_rpc += int(requests(run.after.planned, nfs.volume_id) - requests(run.before.planned, nfs.volume_id))
            own += own_rpcs(run, nfs)
    print(f"RPC layer: {per_rpc} requests for {own} RPCs of the mounts' own clients ({rpcs} in mountstats with "
          f"the server-wide client's); TCP level: {exchanges} exchanges")
    assert per_rpc == own
    assert exchanges < rpcs, f"{exchanges} exchanges for {rpcs} RPCs: pipelined RPCs should have merged"
    assert exchanges > rpcs / 4, f"{exchanges} exchanges for {rpcs} RPCs: most RPCs should still be seen"


def test_nfs_latency_times_a_netem_delay_on_loopback(
    nfs_mounts: dict[str, NfsMount], nfs_exporter: GuestExporter, nfs_exporter_kprobes: GuestExporter,
    nfs_measured: dict[str, MeasuredRun]
) -> None:
    """20 ms each way on lo: no request/response exchange, and no RPC round trip, can take less than 40 ms."""
    with netem(NETEM_MS):
        # Both snapshots under the delay, so every exchange between them ran entirely under it: one begun
        # before the delay was switched on has finished a second later, and one whose reply would leave after
        # it is switched off (20 ms instead of 40) ends after the second snapshot. (With the second snapshot
        # taken after switching off, one run counted one exchange under 31 ms, most likely such a straddler.)
        time.sleep(1.0)
        before = take_snapshot(nfs_exporter, nfs_exporter_kprobes)
        run_workload_checked(nfs_mounts["3"], "netem", None, light=True)
        after = take_snapshot(nfs_exporter, nfs_exporter_kprobes)
    for name, b, a, vol in (("planned (RPC layer)", before.planned, after.planned, nfs_mounts["3"].volume_id),
                            ("all-kprobe (TCP level)", before.kprobes, after.kprobes, volume(nfs_mounts))):
        def delta(metric: str, series_a: Series = a, series_b: Series = b, vol: str = vol, **labels: str) -> float:
            return value(series_a, metric, volume_id=vol, **BASE, **labels) - before_traffic(
                series_b, metric, volume_id=vol, **BASE, **labels)

        count = delta("crusoe_vm_nfs_latency_histogram_seconds_count")
        assert count >= 20, f"{name}: only {count} exchanges under netem"
        fast = delta("crusoe_vm_nfs_latency_histogram_seconds_bucket", le="0.030792")
        assert fast == 0, f"{name}: {fast} exchanges timed under 31 ms with {2 * NETEM_MS} ms of netem delay"
        mean = delta("crusoe_vm_nfs_latency_histogram_seconds_sum") / count
        assert 2 * NETEM_MS / 1000 <= mean < 1.0, f"{name}: mean {mean * 1000:.1f} ms"
