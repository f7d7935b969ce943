"""Retransmits under real packet loss: two network namespaces, nftables dropping a share of packets.

Both eBPF plugins are loaded; NFS watches the server namespace's address on
2049, objstore on 8443 and 8444. Traffic to 2050 crosses the same lossy link
but belongs to neither, and must not be counted.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.exporter_scrape import ebpf_unavailable, fake_proc, running, scrape, value
from helpers.netns import VethPair, netns_unavailable, veth_pair

from crusoe_metrics_exporter.app import Exporter

pytestmark = [pytest.mark.ebpf, pytest.mark.netns]

REASON = ebpf_unavailable() or netns_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING retransmit tests in network namespaces: {REASON} !!!", allow_module_level=True)

PEER = str(Path(__file__).resolve().parents[3] / "tests" / "helpers" / "tcp_peer.py")
NFS = {"protocol": "tcp", "operation": "nfs", "volume_id": "unknown"}


def retrans_segs(pair: VethPair) -> int:
    """Retransmission attempts in the client namespace so far.

    The tracepoint fires for every attempt; TcpRetransSegs counts only those
    that went out, TCPRetransFail the ones that did not, so their sum bounds
    what the plugin may count.
    """
    out = pair.run(pair.client, ["nstat", "-az", "TcpRetransSegs", "TcpExtTCPRetransFail"]).stdout
    values = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.startswith("Tcp")}
    if "TcpRetransSegs" not in values:
        raise AssertionError(f"no TcpRetransSegs in {out!r}")
    return values["TcpRetransSegs"] + values.get("TcpExtTCPRetransFail", 0)


@pytest.fixture
def lossy() -> Iterator[VethPair]:
    with veth_pair() as pair:
        sinks = [
            pair.popen(pair.server, [sys.executable, PEER, "sink", pair.server_addr, str(port)],
                       stdout=subprocess.PIPE)
            for port in (2049, 2050, 8443)
        ]
        try:
            for sink in sinks:
                assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            # ~180 segments per flow at 10 % loss: a flow without a drop is a
            # 1-in-10^8 event.
            pair.drop_incoming(pair.server, 10)
            yield pair
        finally:
            for sink in sinks:
                sink.kill()
                sink.wait()


@pytest.fixture
def both_plugins(lossy: VethPair, tmp_path: Path) -> Iterator[Exporter]:
    env = {
        "NFS_SERVER_IPS": lossy.server_addr,
        "OBJSTORE_ENDPOINT_IPS": lossy.server_addr,
        "OBJSTORE_ENDPOINT_PORT": "8443,8444",
        "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
    }
    with running(env, ["nfs_latency", "objstore"]) as exporter:
        yield exporter


def send(pair: VethPair, port: int, nbytes: int = 256 * 1024) -> None:
    pair.run(pair.client, [sys.executable, PEER, "send", pair.server_addr, str(port), str(nbytes)])


def test_retransmits_are_counted_for_the_right_destination(lossy: VethPair, both_plugins: Exporter) -> None:
    start = retrans_segs(lossy)
    send(lossy, 2050)
    s = scrape(both_plugins)
    after_unwatched = retrans_segs(lossy)
    assert after_unwatched > start, "the lossy link produced no retransmits; the test proves nothing"
    assert value(s, "crusoe_vm_nfs_tcp_retransmits_total", **NFS) == 0
    assert value(s, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=lossy.server_addr) == 0

    send(lossy, 2049)
    # Read the kernel's counter after the scrape: a retransmission the plugin
    # counted (a late one of the connection's last segments) is then in it too.
    s = scrape(both_plugins)
    after_nfs = retrans_segs(lossy)
    nfs = value(s, "crusoe_vm_nfs_tcp_retransmits_total", **NFS)
    # One tracepoint hit per retransmitted skb; an skb can carry several segments.
    assert 0 < nfs <= after_nfs - after_unwatched, (nfs, after_nfs - after_unwatched)
    assert value(s, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=lossy.server_addr) == 0

    send(lossy, 8443)
    s = scrape(both_plugins)
    after_obj = retrans_segs(lossy)
    obj = value(s, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=lossy.server_addr)
    assert 0 < obj <= after_obj - after_nfs
    assert value(s, "crusoe_vm_nfs_tcp_retransmits_total", **NFS) == nfs
    assert value(s, "crusoe_vm_objectstore_bytes_sent_total", endpoint=lossy.server_addr) == 256 * 1024


def test_retransmits_of_a_connection_that_dies_are_counted(lossy: VethPair, both_plugins: Exporter) -> None:
    # Nothing listens on 8444 and every packet to it is dropped: the SYN is
    # retransmitted until the client gives up. The seed only counted
    # retransmits when a later request finished, so these were lost.
    lossy.drop_incoming(lossy.server, 100, tcp_dport=8444)
    script = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(1.6)\n"
        f"try:\n    s.connect(({lossy.server_addr!r}, 8444))\nexcept OSError:\n    pass\n"
    )
    lossy.run(lossy.client, [sys.executable, "-c", script])
    s = scrape(both_plugins)
    assert value(s, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=lossy.server_addr) >= 1
    assert value(s, "crusoe_vm_objectstore_connections_total", endpoint=lossy.server_addr) == 0
