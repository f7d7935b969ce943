"""The command line as a user meets it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from helpers.builtins import builtin_plugins
from helpers.server import CLI

BUILTINS = builtin_plugins()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    ("env", "name"),
    [({"PORT": "abc"}, "PORT"), ({"NFS_TARGET_PORTS": "2049,x"}, "NFS_TARGET_PORTS"),
     ({"PROBE_INTERVAL": "soon"}, "PROBE_INTERVAL"), ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL")],
)
def test_bad_environment_exits_non_zero_with_one_line(env: dict[str, str], name: str) -> None:
    result = run(env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "expected" in lines[0]
    assert "Traceback" not in result.stderr


def test_plugins_lists_the_seven_builtins_with_state_and_reason() -> None:
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plugins) >= BUILTINS
    for name in BUILTINS:
        p = plugins[name]
        assert p["distribution"] == "crusoe-metrics-exporter"
        assert p["state"] in ("active", "unsupported", "disabled", "failed")
        if p["state"] != "active":
            assert p["reason"], f"{name} is {p['state']} without a reason"
    table = run("plugins").stdout
    assert all(name in table for name in BUILTINS)


def test_config_init_then_show_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "exporter.toml"
    assert run("config", "init", str(path)).returncode == 0
    text = path.read_text()
    assert "# HTTP port" in text or "# TCP port" in text
    document = tomllib.loads(text)
    assert {"exporter", "targets", "plugins"} <= set(document)
    assert set(document["plugins"]) | {n for n in BUILTINS if n not in document["plugins"]} >= BUILTINS

    again = run("config", "init", str(path))
    assert again.returncode == 1 and "--force" in again.stderr
    assert run("config", "init", "--force", str(path)).returncode == 0

    shown = run("--config", str(path), "config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    effective = json.loads(shown.stdout)
    for section, options in effective.items():
        for key, entry in options.items():
            assert entry["source"].startswith("config file"), (section, key, entry)
            file_section = document
            for part in section.split("."):
                file_section = file_section[part]
            if file_section[key] != "auto":
                assert entry["value"] == file_section[key]

    human = run("--config", str(path), "config", "show", env={"PORT": "9123"}).stdout
    assert "port = 9123  # environment PORT" in human


def test_collect_rejects_an_unknown_plugin() -> None:
    result = run("collect", "--plugin", "nope")
    assert result.returncode == 2 and "invalid --plugin='nope'" in result.stderr


def test_collect_rejects_a_bad_duration() -> None:
    result = run("collect", "--duration", "soon", "--plugin", "disk_stats")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "crusoe-metrics-exporter: invalid --duration='soon': expected a duration such as 30s, 5m or 0s"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_collect_watches_for_its_duration_and_a_signal_collects_at_once(sig: signal.Signals) -> None:
    proc = subprocess.Popen([CLI, "--log-level", "info", "collect", "--duration", "10m", "--plugin", "disk_stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        started = time.monotonic()
        for line in proc.stderr:
            if "collect: watching for 600 s" in line:
                break
        else:
            raise AssertionError("collect never started watching")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 120
    assert "crusoe_vm_exporter_plugin_collect_duration_seconds{plugin=\"disk_stats\"}" in out, out[-2000:]


def test_unknown_set_is_refused() -> None:
    result = run("--set", "plugins.disk_stats.colour=red", "plugins")
    assert result.returncode == 2 and "unknown setting 'plugins.disk_stats.colour'" in result.stderr


def test_version() -> None:
    assert run("--version").stdout.startswith("crusoe-metrics-exporter, version ")


@pytest.mark.ebpf
def test_non_root_user_sees_ebpf_plugins_unsupported_with_a_reason() -> None:
    if os.geteuid() != 0:
        pytest.skip("!!! needs root to switch to an unprivileged user !!!")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CLI, "plugins", "--json"],
                            capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    for name in ("disk_latency", "nfs_latency"):
        assert plugins[name]["state"] == "unsupported", plugins[name]
        assert "root" in plugins[name]["reason"] or "CAP_BPF" in plugins[name]["reason"]
    assert plugins["disk_stats"]["state"] == "active"
    assert not [p for p in plugins.values() if p["state"] == "failed"]
