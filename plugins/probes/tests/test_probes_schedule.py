"""Scheduling and reporting through the real exporter: background rounds, no probe in a scrape."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.server import running_exporter

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.settings import Overrides


@pytest.fixture
def exporter_for(tmp_path: Path) -> Iterator[Callable[..., Exporter]]:
    made: list[Exporter] = []

    def make(**env: str) -> Exporter:
        proc = tmp_path / "proc"
        (proc / "1").mkdir(parents=True, exist_ok=True)
        (proc / "1" / "mounts").write_text("")
        exporter = Exporter.from_environment(environ={"HOST_PROC_PATH": str(proc), "PROBE_JITTER": "0s", **env})
        exporter.start(only=["probes"])
        made.append(exporter)
        rec = next(r for r in exporter.records if r.name == "probes")
        assert rec.state == "active", rec.reason
        return exporter

    yield make
    for e in made:
        e.stop()


def scrape(exporter: Exporter) -> str:
    return render(exporter.collect(only=["probes"])).decode()


def test_rounds_repeat_at_the_interval_and_results_update(
    rpc_server: Callable[..., Any], exporter_for: Callable[..., Exporter], wait: Callable[..., Any],
    metric: Callable[..., float | None],
) -> None:
    server = rpc_server("ok")
    # 1s: the shortest interval the setting accepts.
    exporter = exporter_for(NFS_SERVER_IPS="127.0.0.1", NFS_TARGET_PORTS=str(server.port), PROBE_INTERVAL="1s")
    rpc = {"probe": "nfs_rpc", "target": "nfs", "endpoint": "127.0.0.1", "port": str(server.port)}
    assert wait(lambda: metric(scrape(exporter), "crusoe_vm_probe_success", **rpc) == 1.0, 2.0)
    first = metric(scrape(exporter), "crusoe_vm_probe_last_run_timestamp_seconds", **rpc)
    assert wait(lambda: len(server.calls) >= 3, 4.0), server.calls
    text = scrape(exporter)
    assert (metric(text, "crusoe_vm_probe_last_run_timestamp_seconds", **rpc) or 0) > (first or 0)
    assert metric(text, "crusoe_vm_probe_success", probe="icmp", target="nfs", endpoint="127.0.0.1", port="") == 1.0
    assert 0 < (metric(text, "crusoe_vm_nfs_rpc_probe_latency_seconds", endpoint="127.0.0.1") or 0) < 1.0
    assert 0 < (metric(text, "crusoe_vm_nfs_ping_latency_seconds", endpoint="127.0.0.1") or 0) < 1.0
    assert metric(text, "crusoe_vm_probe_phase_duration_seconds", phase="rpc", **rpc) is not None
    assert metric(text, "crusoe_vm_probe_phase_duration_seconds", phase="connect", **rpc) is not None

    # The responder turns bad: failure is reported as failure, not as a latency.
    server.mode = "bad_xid"
    assert wait(lambda: metric(scrape(exporter), "crusoe_vm_probe_success", **rpc) == 0.0, 3.0)
    text = scrape(exporter)
    assert metric(text, "crusoe_vm_nfs_rpc_probe_latency_seconds", endpoint="127.0.0.1") == 1.0
    assert (metric(text, "crusoe_vm_probe_duration_seconds", **rpc) or 1.0) < 0.5
    assert (metric(text, "crusoe_vm_probe_failures_total", reason="bad_xid", **rpc) or 0) >= 1
    assert metric(text, "crusoe_vm_probe_phase_duration_seconds", phase="rpc", **rpc) is None


def test_scrapes_never_trigger_probes(
    rpc_server: Callable[..., Any], exporter_for: Callable[..., Exporter], wait: Callable[..., Any]
) -> None:
    server = rpc_server("ok")
    exporter = exporter_for(NFS_SERVER_IPS="127.0.0.1", NFS_TARGET_PORTS=str(server.port), PROBE_INTERVAL="1m")
    assert wait(lambda: len(server.calls) == 1, 2.0)
    for _ in range(20):
        scrape(exporter)
    time.sleep(0.2)
    assert len(server.calls) == 1


def test_probe_of_a_removed_target_disappears(
    tmp_path: Path, rpc_server: Callable[..., Any], exporter_for: Callable[..., Exporter],
    wait: Callable[..., Any], metric: Callable[..., float | None],
) -> None:
    server = rpc_server("ok")
    exporter = exporter_for(NFS_TARGET_PORTS=str(server.port), PROBE_INTERVAL="1s",
                            NFS_MOUNT_REFRESH_INTERVAL="1s")
    mounts = tmp_path / "proc" / "1" / "mounts"
    mounts.write_text("127.0.0.1:/volumes/v1 /mnt/v1 nfs4 rw,addr=127.0.0.1 0 0\n")
    rpc = {"probe": "nfs_rpc", "endpoint": "127.0.0.1", "port": str(server.port)}
    assert wait(lambda: metric(scrape(exporter), "crusoe_vm_probe_success", **rpc) == 1.0, 4.0)
    mounts.write_text("")
    assert wait(lambda: metric(scrape(exporter), "crusoe_vm_probe_success", **rpc) is None, 4.0)


def test_exporter_keeps_serving_while_a_probe_hangs(
    rpc_server: Callable[..., Any], tmp_path: Path, wait: Callable[..., Any], metric: Callable[..., float | None]
) -> None:
    server = rpc_server("hang")
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mounts").write_text("")
    env = {
        "HOST_PROC_PATH": str(tmp_path / "proc"),
        "CRUSOE_EXPORTER_ENABLE": "probes",
        "NFS_SERVER_IPS": "127.0.0.1",
        "NFS_TARGET_PORTS": str(server.port),
        "PROBE_INTERVAL": "30s",
        "PROBE_JITTER": "0s",
        "PROBE_TIMEOUT": "30s",
    }
    with running_exporter(env) as exporter:
        assert wait(lambda: len(server.calls) == 1, 5.0), "the RPC probe never reached the responder"
        for _ in range(5):
            started = time.monotonic()
            status, _, text = exporter.get("/metrics", timeout=5)
            assert status == 200 and time.monotonic() - started < 1.0
            # ICMP finished; the hanging RPC probe has no result yet, and nothing pretends it has.
            assert metric(text, "crusoe_vm_probe_success", probe="icmp", endpoint="127.0.0.1") == 1.0
            assert metric(text, "crusoe_vm_probe_success", probe="nfs_rpc") is None
            assert metric(text, "crusoe_vm_exporter_plugin_up", plugin="probes") == 1.0
            time.sleep(0.2)


def test_new_mount_is_probed_without_waiting_for_the_interval(
    tmp_path: Path, rpc_server: Callable[..., Any], exporter_for: Callable[..., Exporter],
    wait: Callable[..., Any], metric: Callable[..., float | None],
) -> None:
    server = rpc_server("ok")
    exporter = exporter_for(NFS_TARGET_PORTS=str(server.port), PROBE_INTERVAL="10m",
                            NFS_MOUNT_REFRESH_INTERVAL="1s")
    time.sleep(0.2)
    assert server.calls == []
    (tmp_path / "proc" / "1" / "mounts").write_text("127.0.0.1:/volumes/v9 /mnt/v9 nfs4 rw,addr=127.0.0.1 0 0\n")
    rpc = {"probe": "nfs_rpc", "endpoint": "127.0.0.1", "port": str(server.port)}
    assert wait(lambda: metric(scrape(exporter), "crusoe_vm_probe_success", **rpc) == 1.0, 3.0)
    assert len(server.calls) == 1


def test_objectstore_https_and_http_through_the_exporter(
    test_ca: Any, http_server: Callable[..., Any], tmp_path: Path, wait: Callable[..., Any],
    metric: Callable[..., float | None],
) -> None:
    tls_server = http_server(test_ca)
    plain = http_server(None, response=b"HTTP/1.1 404 Not Found\r\n\r\n")
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "mounts").write_text("")
    env = {
        "HOST_PROC_PATH": str(proc),
        "PROBE_JITTER": "0s",
        "PROBE_INTERVAL": "1m",
        "OBJSTORE_ENDPOINT_FQDN": "localhost",  # resolved by the real system resolver
        "OBJSTORE_ENDPOINT_PORT": f"{tls_server.port},{plain.port}",
        "PROBE_CA_BUNDLE": str(test_ca.ca_cert),
    }
    exporter = Exporter.from_environment(
        environ=env, overrides=Overrides({"plugins.probes.https_ports": str(tls_server.port)})
    )
    exporter.start(only=["probes"])
    try:
        https = {"probe": "https", "target": "objectstore", "endpoint": "127.0.0.1", "port": str(tls_server.port)}
        http = {"probe": "http", "target": "objectstore", "endpoint": "127.0.0.1", "port": str(plain.port)}

        def done() -> str | None:
            text = scrape(exporter)
            both = metric(text, "crusoe_vm_probe_success", **https) and metric(text, "crusoe_vm_probe_success", **http)
            return text if both else None

        text = wait(done, 5.0)
        assert text, scrape(exporter)
        assert tls_server.snis == ["localhost"] and plain.hosts == [f"localhost:{plain.port}"]
        for phase in ("connect", "tls", "first_byte"):
            assert metric(text, "crusoe_vm_probe_phase_duration_seconds", phase=phase, **https) is not None
        assert 0 < (metric(text, "crusoe_vm_objectstore_https_probe_latency_seconds", endpoint="127.0.0.1") or 0) < 1
        assert 0 < (metric(text, "crusoe_vm_objectstore_ping_latency_seconds", endpoint="127.0.0.1") or 0) < 1
        assert metric(text, "crusoe_vm_dns_resolve_successes_total", type="objectstore", host="localhost") == 1.0
    finally:
        exporter.stop()


def test_unreadable_ca_bundle_fails_https_only(
    tmp_path: Path, test_ca: Any, http_server: Callable[..., Any], exporter_for: Callable[..., Exporter],
    wait: Callable[..., Any], metric: Callable[..., float | None],
) -> None:
    tls_server = http_server(test_ca)
    exporter = exporter_for(OBJSTORE_ENDPOINT_FQDN="localhost", OBJSTORE_ENDPOINT_PORT="443",
                            PROBE_CA_BUNDLE=str(tmp_path / "missing.pem"), PROBE_INTERVAL="1m")
    assert tls_server.port  # the server exists; the probe must not even get that far
    https = {"probe": "https", "endpoint": "127.0.0.1", "port": "443"}
    # Both probes of the round must have reported (ICMP may finish after HTTPS on a busy machine).
    def round_done() -> bool:
        text = scrape(exporter)
        return (metric(text, "crusoe_vm_probe_success", **https) == 0.0
                and metric(text, "crusoe_vm_probe_success", probe="icmp", endpoint="127.0.0.1") is not None)

    assert wait(round_done, 15.0)
    text = scrape(exporter)
    assert metric(text, "crusoe_vm_probe_failures_total", reason="tls_config", **https) == 1.0
    assert metric(text, "crusoe_vm_probes_collection_errors_total") == 1.0
    assert metric(text, "crusoe_vm_probe_success", probe="icmp", endpoint="127.0.0.1") == 1.0


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"PROBE_INTERVAL": "0s"}, {}, "invalid PROBE_INTERVAL='0s': expected a duration such as 30s, 5m or 1h30m, "
                                       "from 1s to 24h"),
        ({"PROBE_TIMEOUT": "0s"}, {}, "invalid PROBE_TIMEOUT='0s'"),
        ({}, {"plugins.probes.nfs_rpc_version": "2"}, "invalid --set plugins.probes.nfs_rpc_version='2': "
                                                      "expected one of 4, 3"),
    ],
)
def test_bad_options_stop_start_up_with_one_line(tmp_path: Path, env: dict[str, str], overrides: dict[str, str],
                                                 message: str) -> None:
    (tmp_path / "1").mkdir()
    with pytest.raises(SettingError) as info:
        Exporter.from_environment(environ={"HOST_PROC_PATH": str(tmp_path), **env}, overrides=Overrides(overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_exposition_with_results_is_promtool_clean(
    rpc_server: Callable[..., Any], exporter_for: Callable[..., Exporter], wait: Callable[..., Any],
    metric: Callable[..., float | None],
) -> None:
    good, bad = rpc_server("ok"), rpc_server("prog_mismatch")
    exporter = exporter_for(NFS_SERVER_IPS="127.0.0.1,::1", NFS_TARGET_PORTS=f"{good.port},{bad.port}",
                            OBJSTORE_ENDPOINT_IPS="127.0.0.1", OBJSTORE_ENDPOINT_PORT="9", PROBE_INTERVAL="1m")
    assert wait(lambda: scrape(exporter).count("crusoe_vm_probe_success{") == 8, 3.0), scrape(exporter)
    text = scrape(exporter)
    assert metric(text, "crusoe_vm_probe_failures_total", reason="prog_mismatch", endpoint="127.0.0.1") == 1.0
    # The seed gauge follows the first configured NFS port.
    assert (metric(text, "crusoe_vm_nfs_rpc_probe_latency_seconds", endpoint="127.0.0.1") or 1.0) < 1.0
    tool = shutil.which("promtool")
    assert tool, "promtool missing: `make test` installs Debian's prometheus package"
    result = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
