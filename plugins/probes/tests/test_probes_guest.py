"""probes' NFS NULL RPC against the real nfsd of the test guest (Debian 6.1), for NFSv3 and NFSv4.

The servers are discovered from the guest's real NFS mounts; stopping nfsd
(``rpc.nfsd 0``: the threads go, port 2049 closes) must turn the probe into a
counted failure, and starting it again back into a success.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from helpers.exporter_scrape import Series
from helpers.guest import GuestExporter, start_exporter
from helpers.guest_nfs import NfsMount, NfsServer

pytestmark = pytest.mark.kernel_vm

RPC = {"probe": "nfs_rpc", "target": "nfs", "endpoint": "127.0.0.1", "port": "2049"}
SETTINGS = {"plugins.probes.interval": "1s", "plugins.probes.jitter": "0s", "plugins.probes.timeout": "1s"}


def _get(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def _wait(ex: GuestExporter, check: Callable[[Series], bool], seconds: float = 30.0) -> Series:
    deadline = time.monotonic() + seconds
    while True:
        series = ex.scrape(["probes"])
        if check(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.5)


def _succeeded(series: Series) -> bool:
    return _get(series, "crusoe_vm_probe_success", **RPC) == 1.0


@pytest.mark.parametrize("rpc_version", ["3", "4"], ids=["nfsv3", "nfsv4"])
def test_probes_null_rpc_succeeds_against_real_nfsd(rpc_version: str, nfs_mounts: dict[str, NfsMount]) -> None:
    ex = start_exporter(["probes"], settings={**SETTINGS, "plugins.probes.nfs_rpc_version": rpc_version})
    try:
        series = _wait(ex, _succeeded)
        assert _succeeded(series), f"NULL RPC v{rpc_version} to the guest's nfsd did not succeed: " + str(
            {k: v for k, v in series.items() if "probe" in k[0]})
        latency = _get(series, "crusoe_vm_nfs_rpc_probe_latency_seconds", endpoint="127.0.0.1")
        assert latency is not None and 0 < latency < 1.0
    finally:
        ex.exporter.stop()


def test_probes_null_rpc_fails_while_nfsd_is_stopped(nfs_server: NfsServer, nfs_mounts: dict[str, NfsMount]) -> None:
    ex = start_exporter(["probes"], settings=SETTINGS)
    try:
        assert _succeeded(_wait(ex, _succeeded)), "no success before stopping nfsd"
        nfs_server.stop_nfsd()
        try:
            assert nfs_server.threads() == 0
            series = _wait(ex, lambda s: _get(s, "crusoe_vm_probe_success", **RPC) == 0.0)
            assert _get(series, "crusoe_vm_probe_success", **RPC) == 0.0, "the probe still succeeds without nfsd"
            refused = _get(series, "crusoe_vm_probe_failures_total", **RPC, reason="refused")
            assert refused is not None and refused >= 1, {k: v for k, v in series.items() if "failures" in k[0]}
        finally:
            nfs_server.start_nfsd()
        assert _succeeded(_wait(ex, _succeeded)), "the probe did not recover after nfsd came back"
    finally:
        ex.exporter.stop()
