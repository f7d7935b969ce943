"""Session fixtures of the guest suite (registered by the root conftest; used only by kernel_vm tests).

One NFS server and two mounts serve every guest test. The workload runs
once on each mount before any exporter is started (the control run), so a
hang that only happens with the exporter is told apart from one of the
kernel or the emulation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.exporter_scrape import Series
from helpers.guest import GuestExporter, kernel_attachments, start_exporter
from helpers.guest_nfs import (
    NFS_PORT,
    MountBlock,
    NfsMount,
    NfsServer,
    WorkloadResult,
    client_sockets,
    mount,
    mountstats,
    parse_mountstats,
    run_workload,
    run_workload_checked,
    unmount,
)

VERSIONS = ("3", "4.2")


@pytest.fixture(scope="session")
def nfs_server() -> Iterator[NfsServer]:
    server = NfsServer()
    server.start()
    yield server
    if not server.running:
        server.start_nfsd()


@pytest.fixture(scope="session")
def nfs_mounts(nfs_server: NfsServer) -> Iterator[dict[str, NfsMount]]:
    """``{"3": NFSv3 mount, "4.2": NFSv4.2 mount}`` of /volumes/<uuid> exports, both nconnect=4 over 127.0.0.1."""
    mounts = {version: mount(nfs_server, version) for version in VERSIONS}
    yield mounts
    for nfs in mounts.values():
        unmount(nfs)


@pytest.fixture(scope="session")
def nfs_control(nfs_mounts: dict[str, NfsMount]) -> dict[str, WorkloadResult]:
    """The NFS workload on both mounts with no eBPF program of ours loaded: the reference for hangs."""
    attached = kernel_attachments()
    assert attached == [], f"the control run must run without the exporter, but programs are attached: {attached}"
    return {nfs.name: run_workload(nfs, "control") for nfs in nfs_mounts.values()}


# -- the exporter on the NFS traffic -------------------------------------------------------------------------
def _nfs_settings(nfs_mounts: dict[str, NfsMount]) -> dict[str, str]:
    ops = sorted({op for nfs in nfs_mounts.values() for op in mountstats(nfs.device).ops})
    return {
        # Every op the kernel prints for these mounts, so every per-op line is compared.
        "plugins.nfs_stats.operations": ",".join(ops),
        # The object-store plugin watches the NFS server too: real kernel traffic with byte counts ss can check.
        "targets.objstore_endpoint_ips": "127.0.0.1",
        "targets.objstore_endpoint_ports": str(NFS_PORT),
    }


EXPORTER_ENV = {"CRUSOE_EXPORTER_STATE_DIR": "/tmp/cme-state"}
NFS_PLUGINS = ("nfs_stats", "nfs_latency", "objstore")
TCP_PLUGINS = ("nfs_latency", "objstore")


@pytest.fixture(scope="session")
def nfs_exporter(nfs_mounts: dict[str, NfsMount], nfs_control: dict[str, WorkloadResult]) -> Iterator[GuestExporter]:
    """nfs_stats, nfs_latency and objstore attached as feature detection plans (started after the control run)."""
    ex = start_exporter(NFS_PLUGINS, EXPORTER_ENV, _nfs_settings(nfs_mounts))
    yield ex
    ex.exporter.stop()


@pytest.fixture(scope="session")
def nfs_exporter_kprobes(
    nfs_mounts: dict[str, NfsMount], nfs_control: dict[str, WorkloadResult]
) -> Iterator[GuestExporter]:
    """nfs_latency and objstore forced onto their kprobe variants for every hook (retransmit and close too).

    nfs_latency keeps its latency at the TCP level here (``latency_source = "tcp"``): with the RPC layer
    traced, the TCP program would stop timing, and this exporter is what tests the kprobe send/receive path.
    """
    from crusoe_metrics_exporter.plugins._tcptrace import collector, tracer

    settings = {**_nfs_settings(nfs_mounts), "plugins.nfs_latency.latency_source": "tcp"}
    with pytest.MonkeyPatch.context() as mp:
        # The collector module's own reference to make_spec is what start() calls.
        mp.setattr(collector, "make_spec", functools.partial(tracer.make_spec, kinds=("kprobe",)))
        ex = start_exporter(TCP_PLUGINS, EXPORTER_ENV, settings)
    yield ex
    ex.exporter.stop()


@dataclass
class Snapshot:
    planned: Series
    kprobes: Series
    blocks: dict[str, MountBlock]
    #: ss counters of the client's sockets just before and just after the scrapes.
    sockets_before: list[dict[str, int]]
    sockets_after: list[dict[str, int]]


@dataclass
class MeasuredRun:
    nfs: NfsMount
    before: Snapshot
    after: Snapshot
    result: WorkloadResult

    def block_delta(self, device: str, pick: Callable[[MountBlock], int]) -> int:
        return pick(self.after.blocks[device]) - pick(self.before.blocks[device])


def take_snapshot(planned: GuestExporter, kprobes: GuestExporter) -> Snapshot:
    before = client_sockets()
    series = planned.scrape(), kprobes.scrape()
    after = client_sockets()
    blocks = parse_mountstats(Path("/proc/self/mountstats").read_text())
    return Snapshot(series[0], series[1], blocks, before, after)


@pytest.fixture(scope="session")
def nfs_measured(
    nfs_mounts: dict[str, NfsMount],
    nfs_control: dict[str, WorkloadResult],
    nfs_exporter: GuestExporter,
    nfs_exporter_kprobes: GuestExporter,
) -> dict[str, MeasuredRun]:
    """The same workload as the control run, one mount at a time, with both exporters attached."""
    runs = {}
    for version, nfs in nfs_mounts.items():
        before = take_snapshot(nfs_exporter, nfs_exporter_kprobes)
        result = run_workload_checked(nfs, "measured", nfs_control)
        runs[version] = MeasuredRun(nfs, before, take_snapshot(nfs_exporter, nfs_exporter_kprobes), result)
    return runs
