"""Retransmitted segments on Debian's 6.1 kernel in the test guest, against the namespace's nstat.

6.1 has tcp:tcp_retransmit_skb without its later `err` argument (it fires
only for attempts that went out) and no sock:sock_send_length, so
nfs_latency attaches retransmit and close as tp_btf and send/receive by
kprobe: keys from both kinds must agree. The guest has no nftables: netem
drops 20 % of what the client sends, TSO super-packets whole.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.exporter_scrape import before_traffic, fake_proc, value
from helpers.guest import GuestExporter, start_exporter
from helpers.netns import VethPair, veth_pair

pytestmark = pytest.mark.kernel_vm

PEER = str(Path(__file__).resolve().parents[3] / "tests" / "helpers" / "tcp_peer.py")
NFS = {"protocol": "tcp", "operation": "nfs", "volume_id": "unknown"}


@pytest.fixture(scope="module")
def lossy() -> Iterator[VethPair]:
    with veth_pair(offload=True) as pair:
        sink = pair.popen(pair.server, [sys.executable, PEER, "sink", pair.server_addr, "2049"],
                          stdout=subprocess.PIPE)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            pair.drop_outgoing(pair.client, 20)
            yield pair
        finally:
            sink.kill()
            sink.wait()


@pytest.fixture(scope="module")
def nfs(lossy: VethPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestExporter]:
    env = {"NFS_SERVER_IPS": lossy.server_addr, "HOST_PROC_PATH": str(fake_proc(tmp_path_factory.mktemp("proc")))}
    ex = start_exporter(["nfs_latency"], env=env)
    try:
        yield ex
    finally:
        ex.exporter.stop()


def _retrans_segs(pair: VethPair) -> int:
    out = pair.run(pair.client, ["nstat", "-az", "TcpRetransSegs", "TcpExtTCPRetransFail"]).stdout
    values = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.startswith("Tcp")}
    return values["TcpRetransSegs"] - values.get("TcpExtTCPRetransFail", 0)


def test_retransmitted_segments_equal_nstat_on_6_1(lossy: VethPair, nfs: GuestExporter) -> None:
    details = nfs.details["nfs_latency"]
    assert details["attach.retransmit"].split()[0] == "tp_btf", details
    assert details["attach.send"].split()[0] == "kprobe", details
    before = _retrans_segs(lossy)
    counted0 = before_traffic(nfs.scrape(["nfs_latency"]), "crusoe_vm_nfs_tcp_retransmits_total", **NFS)
    lossy.run(lossy.client, [sys.executable, PEER, "send", lossy.server_addr, "2049", str(256 * 1024)], timeout=300)
    counted = value(nfs.scrape(["nfs_latency"]), "crusoe_vm_nfs_tcp_retransmits_total", **NFS) - counted0
    delta = _retrans_segs(lossy) - before
    assert delta > 0, "the lossy link produced no retransmits; the test proves nothing"
    assert counted == delta, f"nfs_latency counted {counted} retransmitted segments, nstat {delta}"
