"""Retransmits under real packet loss: two network namespaces, nftables dropping a share of packets.

Both eBPF plugins are loaded; NFS watches the server namespace's address on
2049, objstore on 8443 and 8444. Traffic to 2050 crosses the same lossy link
but belongs to neither, and must not be counted.

The link keeps TSO/GSO, so a dropped packet is a 64 KiB super-packet and a
retransmitted skb carries several segments: the plugins count segments, as
the kernel's TcpRetransSegs does, and must equal the client namespace's
nstat delta exactly (counting per skb came out 5x low).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.exporter_scrape import ebpf_unavailable, fake_proc, labelsets, running, scrape, value
from helpers.netns import VethPair, netns_unavailable, veth_pair
from helpers.silent_loss import silent_loss_margin

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.ebpf import kernel
from crusoe_metrics_exporter.plugins._tcptrace import collector as tcp_collector
from crusoe_metrics_exporter.plugins._tcptrace.tracer import make_spec

pytestmark = [pytest.mark.ebpf, pytest.mark.netns]

REASON = ebpf_unavailable() or netns_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING retransmit tests in network namespaces: {REASON} !!!", allow_module_level=True)

PEER = str(Path(__file__).resolve().parents[3] / "tests" / "helpers" / "tcp_peer.py")
NFS = {"protocol": "tcp", "operation": "nfs", "volume_id": "unknown"}


def retrans_segs(pair: VethPair) -> int:
    """Retransmitted segments that went out in the client namespace so far.

    TcpRetransSegs counts every retransmitted segment the kernel tried to
    send, TCPRetransFail those of them whose transmission failed; the
    plugins count the ones that went out (a failed attempt is not a packet on
    the wire).
    """
    out = pair.run(pair.client, ["nstat", "-az", "TcpRetransSegs", "TcpExtTCPRetransFail"]).stdout
    values = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.startswith("Tcp")}
    if "TcpRetransSegs" not in values:
        raise AssertionError(f"no TcpRetransSegs in {out!r}")
    return values["TcpRetransSegs"] - values.get("TcpExtTCPRetransFail", 0)


@pytest.fixture
def lossy() -> Iterator[VethPair]:
    with veth_pair(offload=True) as pair:
        sinks = [
            pair.popen(pair.server, [sys.executable, PEER, "sink", pair.server_addr, str(port)],
                       stdout=subprocess.PIPE)
            for port in (2049, 2050, 8443)
        ]
        try:
            for sink in sinks:
                assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            # 1 MiB per flow is ~16 super-packets plus many ACK-clocked
            # smaller ones: at 20 % loss a flow without a drop is a 1-in-10^4
            # event, and most drops hit a multi-segment packet.
            pair.drop_incoming(pair.server, 20)
            yield pair
        finally:
            for sink in sinks:
                sink.kill()
                sink.wait()


#: The attach kinds the plugins may use: their preferred order, and the
#: perf-event tracepoints alone (the fallback for kernels without BTF).
KINDS = {"preferred": ("tp_btf", "tracepoint", "kprobe"), "perf-event": ("tracepoint", "kprobe")}


@pytest.fixture(params=sorted(KINDS))
def both_plugins(request: pytest.FixtureRequest, lossy: VethPair, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Exporter]:
    monkeypatch.setattr(tcp_collector, "make_spec", functools.partial(make_spec, kinds=KINDS[request.param]))
    env = {
        "NFS_SERVER_IPS": lossy.server_addr,
        "OBJSTORE_ENDPOINT_IPS": lossy.server_addr,
        "OBJSTORE_ENDPOINT_PORT": "8443,8444",
        "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
    }
    with running(env, ["nfs_latency", "objstore"]) as exporter:
        methods = {r.details["attach.retransmit"].split()[0] for r in exporter.records
                   if r.name in ("nfs_latency", "objstore")}
        expected = KINDS[request.param][0] if kernel.btf_available() else "tracepoint"
        assert methods == {expected}, methods
        yield exporter


def send(pair: VethPair, port: int, nbytes: int = 1024 * 1024) -> None:
    pair.run(pair.client, [sys.executable, PEER, "send", pair.server_addr, str(port), str(nbytes)])


MISSES = "crusoe_vm_exporter_ebpf_program_recursion_misses_total"


#: A perf-event program also loses events the kernel does not count as
#: skipped: the perf layer drops a tracepoint that nests in another of the
#: same context before BPF sees it. How many depends on how retransmit
#: timers nest with the TCP programs' own runs: 1 of 72 here once, but 26 of
#: 235 (11 %, one counted skip) in a quiet fresh-clone CI run on 2026-11-30.
#: This is the fallback for kernels without BTF, documented as lossy; what the
#: test holds it to is never counting more than the kernel and losing at most
#: a fifth.
PERF_SILENT_LOSS = 0.20


def assert_counted(exporter: Exporter, counted: float, kernel_delta: int, misses: float) -> None:
    """Segments counted against the namespace's TcpRetransSegs delta.

    tp_btf programs run whatever other BPF programs do: exact, but for the
    kernel's silent loss (helpers/silent_loss.py). A perf-event
    program is skipped while another BPF program runs on the CPU - on this
    shared machine other tests' programs do - so it may count less: the
    shortfall must be among the skips the kernel counts (``misses``, the self
    metric, from 6.7 on) or within PERF_SILENT_LOSS. Counting per skb instead
    of per segment falls short by far more (8 of 72 here).
    """
    assert kernel_delta > 0
    method = next(r for r in exporter.records if r.name == "nfs_latency").details["attach.retransmit"].split()[0]
    if method == "tp_btf":
        # Exact but for the kernel's silent loss, which no BPF program sees (1 of 135 once).
        assert kernel_delta - silent_loss_margin(kernel_delta) <= counted <= kernel_delta, (
            method, counted, kernel_delta, misses)
    else:
        assert counted <= kernel_delta <= counted + misses + PERF_SILENT_LOSS * kernel_delta, (
            method, counted, kernel_delta, misses)


def test_retransmits_are_counted_for_the_right_destination(lossy: VethPair, both_plugins: Exporter) -> None:
    s = scrape(both_plugins)
    nfs_misses0 = value(s, MISSES, plugin="nfs_latency", program="retransmit")
    obj_misses0 = value(s, MISSES, plugin="objstore", program="retransmit")
    start = retrans_segs(lossy)
    send(lossy, 2050)
    s = scrape(both_plugins)
    after_unwatched = retrans_segs(lossy)
    assert after_unwatched > start, "the lossy link produced no retransmits; the test proves nothing"
    # Nothing counted for the watched targets: they have had no traffic, so (idle_series off) no series yet.
    assert labelsets(s, "crusoe_vm_nfs_tcp_retransmits_total") == []
    assert labelsets(s, "crusoe_vm_objectstore_tcp_retransmits_total") == []

    send(lossy, 2049)
    # The sender returns once the sink has everything: its connection
    # retransmits nothing after that, so both counts are final here.
    s = scrape(both_plugins)
    after_nfs = retrans_segs(lossy)
    nfs = value(s, "crusoe_vm_nfs_tcp_retransmits_total", **NFS)
    nfs_misses = value(s, MISSES, plugin="nfs_latency", program="retransmit") - nfs_misses0
    assert_counted(both_plugins, nfs, after_nfs - after_unwatched, nfs_misses)
    assert labelsets(s, "crusoe_vm_objectstore_tcp_retransmits_total") == []  # still no object-store traffic

    send(lossy, 8443)
    s = scrape(both_plugins)
    after_obj = retrans_segs(lossy)
    obj = value(s, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=lossy.server_addr)
    obj_misses = value(s, MISSES, plugin="objstore", program="retransmit") - obj_misses0
    assert_counted(both_plugins, obj, after_obj - after_nfs, obj_misses)
    assert value(s, "crusoe_vm_nfs_tcp_retransmits_total", **NFS) == nfs
    assert value(s, "crusoe_vm_objectstore_bytes_sent_total", endpoint=lossy.server_addr) == 1024 * 1024


def test_retransmits_of_a_connection_that_dies_are_counted(lossy: VethPair, both_plugins: Exporter) -> None:
    # Nothing listens on 8444 and every packet to it is dropped: the SYN is
    # retransmitted until the client gives up. The seed only counted
    # retransmits when a later request finished, so these were lost.
    # The first SYN retransmit is due 1 s after the SYN (initial RTO); the
    # client waits 3.5 s so a loaded machine firing that timer late still
    # retransmits at least once (1.6 s was once not enough).
    lossy.drop_incoming(lossy.server, 100, tcp_dport=8444)
    script = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(3.5)\n"
        f"try:\n    s.connect(({lossy.server_addr!r}, 8444))\nexcept OSError:\n    pass\n"
    )
    lossy.run(lossy.client, [sys.executable, "-c", script])
    s = scrape(both_plugins)
    assert value(s, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=lossy.server_addr) >= 1
    assert value(s, "crusoe_vm_objectstore_connections_total", endpoint=lossy.server_addr) == 0
