"""The issue's acceptance scenario, end to end with the real CLI.

A mounts file names an NFS server at 127.0.0.1, an ONC-RPC responder listens
on 127.0.0.1:2049, and ``crusoe-metrics-exporter serve`` runs with
PROBE_INTERVAL=5s. All of it happens inside a network namespace of our own,
so port 2049 and the exporter's port cannot collide with anything on the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import stop

#: Runs inside a network namespace of its own: in CI a skip (not root) is a failure.
pytestmark = pytest.mark.netns

CLI = str(Path(sys.executable).parent / "crusoe-metrics-exporter")
INTERVAL = 5.0


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return str(resp.read().decode())


def test_ping_and_rpc_success_then_failure_when_responder_stops(
    tmp_path: Path,
    netns: Callable[[], Any],
    rpc_server: Callable[..., Any],
    listen: Callable[..., Any],
    metric: Callable[..., float | None],
    wait: Callable[..., Any],
) -> None:
    ns = netns()
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mounts").write_text(
        "/dev/vda1 / ext4 rw,relatime 0 0\n"
        "127.0.0.1:/volumes/0f6e1c2a-acce-4d7e-9b1b-2049e2e2e2e2 /mnt/vol nfs4 "
        "rw,relatime,vers=4.1,proto=tcp,addr=127.0.0.1 0 0\n"
    )
    responder = rpc_server("ok", listener=ns.call(listen, "127.0.0.1", 2049))
    env = {
        **os.environ,
        "HOST_PROC_PATH": str(tmp_path / "proc"),
        "PROBE_INTERVAL": "5s",
        "PORT": "9500",
        "LISTEN_ADDRESS": "127.0.0.1",
        "CRUSOE_EXPORTER_ENABLE": "probes",
    }
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, CLI, "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = "http://127.0.0.1:9500/metrics"
    try:
        started = time.monotonic()
        assert wait(lambda: _try(ns, url), 30.0), "exporter did not answer"
        rpc = {"probe": "nfs_rpc", "target": "nfs", "endpoint": "127.0.0.1", "port": "2049"}
        ping = {"probe": "icmp", "target": "nfs", "endpoint": "127.0.0.1"}

        def succeeded() -> str | None:
            text = ns.call(_get, url)
            ok = metric(text, "crusoe_vm_probe_success", **rpc) == 1.0
            return text if ok and metric(text, "crusoe_vm_probe_success", **ping) == 1.0 else None

        text = wait(succeeded, INTERVAL + 1.0, step=0.1)
        assert text, f"no ping and RPC success within one interval; stderr: {_stderr(proc)}"
        assert time.monotonic() - started < INTERVAL + 2.0
        assert 0 < (metric(text, "crusoe_vm_nfs_rpc_probe_latency_seconds", endpoint="127.0.0.1") or 0) < 1.0
        assert 0 < (metric(text, "crusoe_vm_nfs_ping_latency_seconds", endpoint="127.0.0.1") or 0) < 1.0
        assert responder.calls and responder.calls[0][1:] == (100003, 4)

        responder.stop()  # nothing listens on 2049 any more

        def failed() -> str | None:
            text = ns.call(_get, url)
            return text if metric(text, "crusoe_vm_probe_success", **rpc) == 0.0 else None

        text = wait(failed, INTERVAL * 1.5 + 1.0, step=0.2)
        assert text, "the stopped responder was not reported as a failure within one interval plus jitter"
        assert metric(text, "crusoe_vm_probe_failures_total", reason="refused", **rpc) == 1.0
        assert metric(text, "crusoe_vm_nfs_rpc_probe_latency_seconds", endpoint="127.0.0.1") == 1.0  # seed cap
        assert (metric(text, "crusoe_vm_probe_duration_seconds", **rpc) or 1.0) < 0.5  # the real, short failure
        assert metric(text, "crusoe_vm_probe_phase_duration_seconds", phase="rpc", **rpc) is None
        assert metric(text, "crusoe_vm_probe_success", **ping) == 1.0
    finally:
        stop(proc, timeout=10)


def _try(ns: Any, url: str) -> bool:
    try:
        ns.call(_get, url)
    except OSError:
        return False
    return True


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return "(still running)"
    return proc.stderr.read().decode(errors="replace")[-2000:]
