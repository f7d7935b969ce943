"""Serve at once: the server answers before any plugin has started, readiness follows the plugins.

A real third-party distribution (dist-info with an entry point) provides a
plugin whose start blocks until the test opens its gate, so the order of
events is checked without sleeping.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.fake_plugins import GATED_PLUGIN, install_distribution
from helpers.processes import stop
from helpers.server import CLI, free_port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(condition, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


@contextmanager
def _serve(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    site = Path(tempfile.mkdtemp(prefix="site", dir=tmp_path))
    plugin_env = install_distribution(site, "gated-plugin", "1.0", {"gated_plugin": GATED_PLUGIN.format(name="slow")},
                                      {"slow": "gated_plugin"})
    port = free_port()
    log = tmp_path / "stderr.log"
    full_env = {**os.environ, **plugin_env, "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1",
                "SLOW_GATE": str(tmp_path / "gate"), **env}
    with log.open("wb") as err:
        proc = subprocess.Popen([CLI, "serve", "--enable", "slow,disk_stats", *args], env=full_env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc, port, log
    finally:
        stop(proc)


def test_a_plugin_that_is_still_starting_delays_neither_health_nor_the_others(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with _serve(tmp_path) as (proc, port, log):
        assert _until(lambda: _get(port, "/health") == (200, "OK"))
        assert not gate.exists()  # so the slow plugin cannot have started
        # disk_stats settles in milliseconds; the slow plugin holds readiness.
        assert _until(lambda: _get(port, "/ready") == (503, "starting: slow\n"))
        status, text = _get(port, "/metrics")
        assert status == 200
        assert 'crusoe_vm_exporter_plugin_state{plugin="slow",state="starting"} 1.0' in text
        assert 'crusoe_vm_exporter_plugin_up{plugin="slow"} 0.0' in text
        assert 'crusoe_vm_exporter_plugin_state{plugin="disk_stats",state="active"} 1.0' in text
        assert 'crusoe_vm_exporter_plugin_up{plugin="disk_stats"} 1.0' in text
        assert "crusoe_vm_slow_value" not in text
        _, page = _get(port, "/")
        assert "starting" in page

        gate.touch()
        assert _until(lambda: _get(port, "/ready") == (200, "ready\n"), timeout=10)
        _, text = _get(port, "/metrics")
        assert "crusoe_vm_slow_value 1.0" in text
        assert 'crusoe_vm_exporter_plugin_state{plugin="slow",state="active"} 1.0' in text
        stop(proc)
        assert proc.returncode == 0
        lines = log.read_text().splitlines()
    # One line per plugin as it settles.
    assert len([line for line in lines if "plugin slow active after" in line]) == 1, lines
    assert len([line for line in lines if "plugin disk_stats active after" in line]) == 1, lines
    assert not any("Traceback" in line for line in lines)


def test_a_failed_start_settles_readiness_and_strict_mode_exits_once_it_fails(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with _serve(tmp_path, SLOW_FAIL="1") as (_, port, _log):
        assert _until(lambda: _get(port, "/ready")[0] == 503)
        gate.touch()
        # Failed is settled: ready, and the failure is shown.
        assert _until(lambda: _get(port, "/ready") == (200, "ready\n"), timeout=10)
        _, text = _get(port, "/metrics")
        assert 'crusoe_vm_exporter_plugin_state{plugin="slow",state="failed"} 1.0' in text
        assert 'crusoe_vm_exporter_plugin_up{plugin="disk_stats"} 1.0' in text

    gate.unlink()
    with _serve(tmp_path, "--strict", SLOW_FAIL="1") as (proc, port, log):
        # Strict mode serves while the plugin starts ...
        assert _until(lambda: _get(port, "/health") == (200, "OK"))
        assert proc.poll() is None
        gate.touch()
        # ... and exits non-zero once it settles as failed.
        assert proc.wait(timeout=15) == 1
        err = log.read_text()
    assert err.strip().splitlines()[-1] == (
        "crusoe-metrics-exporter: strict mode: plugins failed: slow (RuntimeError: the gate opened onto a failure)")
    assert "Traceback" not in err
