"""objstore on Debian's 6.1 kernel in the test guest, pointed at the guest's NFS server.

The object-store plugin traces any TCP endpoint it is given; here that is
127.0.0.1:2049, so the kernel's own NFS client connections (four lanes per
mount) are what it counts. Their byte counters are checked against ``ss``'s
per-socket ``bytes_sent`` / ``bytes_received`` for the same sockets over the
same window.
"""

from __future__ import annotations

import pytest
from helpers.exporter_scrape import Series, before_traffic, value
from helpers.guest import GuestExporter, attachments
from helpers.guest_fixtures import MeasuredRun, Snapshot

from crusoe_metrics_exporter.ebpf import Kprobe, attach_plan, plan_details
from crusoe_metrics_exporter.plugins._tcptrace.tracer import plan_spec

pytestmark = pytest.mark.kernel_vm

MOUNTS = pytest.mark.parametrize("version", ["3", "4.2"], ids=["nfsv3_nconnect4", "nfsv4_2_nconnect4"])
ENDPOINT = "127.0.0.1"
ALL_KPROBES = {"kprobe:tcp_sendmsg", "kretprobe:tcp_sendmsg", "kprobe:tcp_cleanup_rbuf",
               "kprobe:tcp_retransmit_skb", "kprobe:tcp_v4_destroy_sock"}


def test_objstore_attaches_by_kprobe_on_6_1(nfs_exporter: GuestExporter) -> None:
    plan = attach_plan(plan_spec("objstore"))
    details = nfs_exporter.details["objstore"]
    for key, text in plan_details(plan).items():
        assert details.get(key) == text, f"{key}: plugin says {details.get(key)!r}, feature detection {text!r}"
    assert isinstance(plan["send"], Kprobe) and isinstance(plan["recv"], Kprobe), plan
    ours, seen = attachments(nfs_exporter, "objstore")
    assert ours == seen, f"runtime attached {ours}, the kernel (bpftool perf) lists {seen}"


def test_objstore_attaches_every_hook_by_kprobe_on_6_1(nfs_exporter_kprobes: GuestExporter) -> None:
    ours, seen = attachments(nfs_exporter_kprobes, "objstore")
    assert ours == seen == ALL_KPROBES


def _ss_window(before: Snapshot, after: Snapshot, field: str) -> tuple[int, int]:
    """The least and most the sockets' ``field`` can have grown between the two snapshots' scrapes."""
    def total(sockets: list[dict[str, int]]) -> int:
        return sum(s.get(field, 0) - (s.get("bytes_retrans", 0) if field == "bytes_sent" else 0) for s in sockets)

    return total(after.sockets_before) - total(before.sockets_after), total(after.sockets_after) - total(
        before.sockets_before)


@MOUNTS
@pytest.mark.parametrize("variant", ["planned", "kprobes"])
def test_objstore_counts_nfs_bytes_like_ss(version: str, variant: str, nfs_measured: dict[str, MeasuredRun]) -> None:
    run = nfs_measured[version]
    b: Series = getattr(run.before, variant)
    a: Series = getattr(run.after, variant)
    assert len(run.after.sockets_after) >= 8, f"expected 4 lanes for each of 2 mounts: {run.after.sockets_after}"
    for metric, field in (("bytes_sent", "bytes_sent"), ("bytes_recv", "bytes_received")):
        counted = value(a, f"crusoe_vm_objectstore_{metric}_total", endpoint=ENDPOINT) - before_traffic(
            b, f"crusoe_vm_objectstore_{metric}_total", endpoint=ENDPOINT)
        low, high = _ss_window(run.before, run.after, field)
        assert low <= counted <= high, f"{variant} {metric}: counted {counted}, ss says {low}..{high}"
    sent = value(a, "crusoe_vm_objectstore_bytes_sent_total", endpoint=ENDPOINT) - before_traffic(
        b, "crusoe_vm_objectstore_bytes_sent_total", endpoint=ENDPOINT)
    assert run.result.dd_bytes <= sent
    phases = value(a, "crusoe_vm_objectstore_connections_total", endpoint=ENDPOINT) - before_traffic(
        b, "crusoe_vm_objectstore_connections_total", endpoint=ENDPOINT)
    assert phases > 0
