"""nfs_latency against real TCP traffic on loopback, with the real eBPF programs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.delay_server import delay_server, private_loopback, run_client
from helpers.exporter_scrape import ebpf_unavailable, fake_proc, labelsets, running, scrape, value

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.targets.directory import TargetDirectory

pytestmark = pytest.mark.ebpf

REASON = ebpf_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING nfs_latency eBPF traffic tests: {REASON} !!!", allow_module_level=True)

BASE = {"protocol": "tcp", "operation": "nfs"}


def directory(exporter: Exporter) -> TargetDirectory:
    """The exporter's target-discovery service (to make it re-read the mounts now)."""
    found = exporter.services.get("targets")
    assert isinstance(found, TargetDirectory)
    return found


def hist(series: dict, le: str, volume: str = "unknown") -> float:  # type: ignore[type-arg]
    return value(series, "crusoe_vm_nfs_latency_histogram_seconds_bucket", le=le, volume_id=volume, **BASE)


@pytest.fixture
def nfs_exporter(tmp_path: Path) -> Iterator[Exporter]:
    env = {"NFS_SERVER_IPS": "127.0.0.1,::1", "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc"))}
    with running(env, ["nfs_latency"]) as exporter:
        yield exporter


def test_delays_land_in_the_right_buckets_and_counts_match(nfs_exporter: Exporter) -> None:
    with delay_server("127.0.0.1", 2049, 0.002):
        run_client("127.0.0.1", 2049, 30)
    s = scrape(nfs_exporter, ["nfs_latency"])
    assert value(s, "crusoe_vm_nfs_requests_total", volume_id="unknown", **BASE) == 30
    assert hist(s, "0.00168") == 0, "a 2 ms answer was timed below 2 ms"
    assert hist(s, "0.004429") >= 27, "most 2 ms answers should be timed within 2-4.4 ms"
    assert value(s, "crusoe_vm_nfs_latency_seconds", volume_id="unknown", **BASE) >= 30 * 0.002

    with delay_server("127.0.0.1", 2049, 0.020):
        run_client("127.0.0.1", 2049, 10)
    s = scrape(nfs_exporter, ["nfs_latency"])
    assert value(s, "crusoe_vm_nfs_requests_total", volume_id="unknown", **BASE) == 40
    assert hist(s, "0.018963") == 30, "a 20 ms answer was timed below 19 ms"
    assert hist(s, "0.030792") >= 39
    assert hist(s, "+Inf") == 40
    assert value(s, "crusoe_vm_nfs_latency_histogram_seconds_count", volume_id="unknown", **BASE) == 40
    total = value(s, "crusoe_vm_nfs_latency_seconds", volume_id="unknown", **BASE)
    assert total == value(s, "crusoe_vm_nfs_latency_histogram_seconds_sum", volume_id="unknown", **BASE)
    assert 30 * 0.002 + 10 * 0.020 <= total < 30 * 0.002 + 10 * 0.020 + 40 * 0.010


def test_every_configured_port_counts_and_nothing_else(tmp_path: Path) -> None:
    watched, other = private_loopback(), private_loopback()
    with (
        delay_server(watched, 0, 0.001) as second_port,
        delay_server(watched, 0, 0.001) as other_port,
        delay_server(other, 2049, 0.001),
        delay_server(watched, 2049, 0.001),
    ):
        env = {
            "NFS_SERVER_IPS": watched,
            "NFS_TARGET_PORTS": f"2049,{second_port.port}",
            "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
        }
        with running(env, ["nfs_latency"]) as nfs_exporter:
            run_client(watched, other_port.port, 15)
            run_client(other, 2049, 15)
            run_client(watched, 2049, 5)
            run_client(watched, second_port.port, 3)
            s = scrape(nfs_exporter, ["nfs_latency"])
    assert value(s, "crusoe_vm_nfs_requests_total", volume_id="unknown", **BASE) == 8


def test_ipv6_and_ipv4_mapped_sockets(tmp_path: Path) -> None:
    v4 = private_loopback()
    env = {"NFS_SERVER_IPS": f"::1,{v4}", "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc"))}
    with running(env, ["nfs_latency"]) as exporter, delay_server("::1", 2049, 0.001), \
            delay_server(v4, 2049, 0.001):
        run_client("::1", 2049, 7)
        s = scrape(exporter, ["nfs_latency"])
        assert value(s, "crusoe_vm_nfs_requests_total", volume_id="unknown", **BASE) == 7
        # An AF_INET6 socket talking to an IPv4 server: the kernel sees ::ffff:<v4>.
        run_client(f"::ffff:{v4}", 2049, 4)
        s = scrape(exporter, ["nfs_latency"])
    assert value(s, "crusoe_vm_nfs_requests_total", volume_id="unknown", **BASE) == 11


def inflight_entries(exporter: Exporter) -> list[tuple[bytes, bytes]]:
    """The per-socket table's taken ways (a way's first 8 bytes are its socket; 0: free)."""
    rec = next(r for r in exporter.records if r.name == "nfs_latency")
    tracer = rec.collector._tracer  # type: ignore[union-attr]
    return [(k, v) for k, v in tracer.loaded.map("tt_sockets").items() if any(v[:8])]


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_closed_sockets_leave_no_inflight_state(tmp_path: Path) -> None:
    address = private_loopback()
    env = {"NFS_SERVER_IPS": address, "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc"))}
    with running(env, ["nfs_latency"]) as exporter, delay_server(address, 2049, 5.0):
        sock = socket.create_connection((address, 2049))
        sock.sendall(b"q" * 64)
        assert wait_until(lambda: len(inflight_entries(exporter)) == 1), "the request was not tracked"
        sock.close()
        assert wait_until(lambda: inflight_entries(exporter) == []), "closing left per-socket state behind"
        s = scrape(exporter, ["nfs_latency"])
    # The request never completed: nothing is counted, and (idle_series off) the volume has no series yet.
    assert labelsets(s, "crusoe_vm_nfs_requests_total") == []


MOUNT = "{server}:/volumes/{vol} /mnt/{vol} nfs4 rw,relatime,vers=4.1,proto=tcp,port=0,addr={server} 0 0\n"


def test_shared_server_label_and_monotonic_counters_across_mount_refresh(tmp_path: Path) -> None:
    server = private_loopback()
    proc = fake_proc(tmp_path / "proc", MOUNT.format(server=server, vol="vol-a"))
    env = {"HOST_PROC_PATH": str(proc), "NFS_MOUNT_REFRESH_INTERVAL": "1h"}
    with running(env, ["nfs_latency"]) as exporter, delay_server(server, 2049, 0.001):
        run_client(server, 2049, 6)
        s = scrape(exporter, ["nfs_latency"])
        assert value(s, "crusoe_vm_nfs_requests_total", volume_id="vol-a", **BASE) == 6

        # A second volume from the same server: one TCP connection serves both,
        # so the traffic is labelled with both, never credited to one of them.
        (proc / "1" / "mounts").write_text(
            MOUNT.format(server=server, vol="vol-a") + MOUNT.format(server=server, vol="vol-b")
        )
        run_client(server, 2049, 3)  # before the refresh: still vol-a's alone
        directory(exporter).refresh_now()
        run_client(server, 2049, 4)
        s = scrape(exporter, ["nfs_latency"])
        assert value(s, "crusoe_vm_nfs_requests_total", volume_id="vol-a", **BASE) == 9
        assert value(s, "crusoe_vm_nfs_requests_total", volume_id="vol-a+vol-b", **BASE) == 4
        assert {d["volume_id"] for d in labelsets(s, "crusoe_vm_nfs_requests_total")} == {"vol-a", "vol-a+vol-b"}

        # The server disappears from the mounts: no longer watched, totals kept.
        (proc / "1" / "mounts").write_text("")
        directory(exporter).refresh_now()
        run_client(server, 2049, 5)
        s = scrape(exporter, ["nfs_latency"])
        assert value(s, "crusoe_vm_nfs_requests_total", volume_id="vol-a", **BASE) == 9
        assert value(s, "crusoe_vm_nfs_requests_total", volume_id="vol-a+vol-b", **BASE) == 4
