"""The systemd artefacts for real: scripts/install.sh installs, the unit verifies and scores <= 4.0,
and the unit's user with exactly the unit's capabilities runs every plugin (and needs each capability).

systemd is not PID 1 here, so the unit cannot be started: ``systemd-analyze``
checks it offline, and its user, capabilities and environment are reproduced
with setpriv (ambient capabilities, as systemd sets them).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.capability_table import REPO, opt_in_capabilities, opt_in_plugins, readme_rows, unit_setting
from helpers.kube import exporter_container
from helpers.server import free_port
from helpers.waiting import http_status, wait_for_ok

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

MAX_EXPOSURE = 4.0
#: Plugins that need a target to be active; the runs below give them one.
TARGET_ENV = {"OBJSTORE_ENDPOINT_IPS": "127.0.0.1", "NFS_SERVER_IPS": "127.0.0.1"}


@dataclass(frozen=True)
class Installed:
    prefix: Path
    unit: Path
    config: Path
    user: str

    @property
    def cli(self) -> str:
        return str(self.prefix / "bin" / "crusoe-metrics-exporter")


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if os.geteuid() != 0 or shutil.which("systemd-analyze") is None or shutil.which("setpriv") is None:
        pytest.skip("!!! DEPLOY TEST SKIPPED: needs root, systemd-analyze and setpriv !!!")
    root = Path(tempfile.mkdtemp(prefix="cme-install-", dir="/var/tmp"))
    root.chmod(0o755)  # the service user must reach the venv
    user = f"cme-test-{os.getpid()}"
    inst = Installed(root / "opt", root / "systemd" / "crusoe-metrics-exporter.service", root / "etc" / "config.toml",
                     user)
    try:
        proc = subprocess.run(
            ["scripts/install.sh", "--prefix", str(inst.prefix), "--user", user, "--unit-dir", str(inst.unit.parent),
             "--config", str(inst.config), "--no-start"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield inst
    finally:
        subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_install_creates_the_user_venv_config_and_unit(installed: Installed) -> None:
    entry = pwd.getpwnam(installed.user)
    assert entry.pw_uid < 1000 and entry.pw_shell == "/usr/sbin/nologin"  # a system user
    assert os.access(installed.cli, os.X_OK)
    assert "[exporter]" in installed.config.read_text()
    unit = installed.unit.read_text()
    assert f"User={installed.user}" in unit and f"ExecStart={installed.cli} serve" in unit
    assert f"CRUSOE_EXPORTER_CONFIG={installed.config}" in unit
    # The venv sees Debian's bcc.
    proc = subprocess.run([str(installed.prefix / "bin" / "python"), "-c", "import bcc"], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_unit_verifies_and_exposure_is_at_most_4(installed: Installed) -> None:
    verify = subprocess.run(["systemd-analyze", "verify", str(installed.unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(installed.unit)],
                              capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, security.stdout


def _as_unit_user(installed: Installed, caps: list[str]) -> list[str]:
    names = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    argv = ["setpriv", f"--reuid={installed.user}", f"--regid={installed.user}", "--clear-groups"]
    argv += [f"--inh-caps={names}", f"--ambient-caps={names}"] if caps else ["--inh-caps=-all"]
    return [*argv, "--"]


def _unit_env(installed: Installed, state: Path) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **TARGET_ENV, "CRUSOE_EXPORTER_STATE_DIR": str(state)}
    for assignment in unit_setting("Environment", installed.unit):
        key, _, value = assignment.partition("=")
        env[key] = value
    return env


@pytest.fixture(scope="module")
def state(installed: Installed) -> Path:
    path = Path(tempfile.mkdtemp(prefix="cme-state-", dir="/var/tmp"))
    os.chown(path, pwd.getpwnam(installed.user).pw_uid, -1)
    return path


def plugin_states(installed: Installed, state: Path, caps: list[str] | None) -> dict[str, dict[str, str]]:
    """The plugin table as the unit's user holding ``caps`` sees it (None: as root, without a sandbox).

    Root gets a state dir of its own: the unit user's is refused to root (another user could have written it).
    """
    prefix = [] if caps is None else _as_unit_user(installed, caps)
    with tempfile.TemporaryDirectory(prefix="cme-state-root-", dir="/var/tmp") as root_state:
        proc = subprocess.run([*prefix, installed.cli, "plugins", "--json"],
                              env=_unit_env(installed, Path(root_state) if caps is None else state),
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: r for r in json.loads(proc.stdout)}


def icmp_mode(installed: Installed, state: Path, caps: list[str]) -> str:
    """The ICMP socket kind the probes plugin settled on, from a real serve's /plugins.json."""
    port = free_port()
    env = {**_unit_env(installed, state), "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1",
           "CRUSOE_EXPORTER_ENABLE": "probes"}
    proc = subprocess.Popen([*_as_unit_user(installed, caps), installed.cli, "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_ok(lambda: http_status(f"http://127.0.0.1:{port}/ready"), proc, 60, "the exporter", step=0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/plugins.json", timeout=5) as resp:
            (probes,) = [r for r in json.load(resp) if r["name"] == "probes"]
        return str(probes["details"]["icmp_ipv4"])
    finally:
        proc.terminate()
        proc.wait(15)


def test_unit_capabilities_are_enough_and_each_is_needed(installed: Installed, state: Path) -> None:
    caps = unit_setting("AmbientCapabilities", installed.unit)
    table = {row.capability: row for row in readme_rows()}
    # A plugin that root cannot run here either (nvme on a host without NVMe) says nothing about the unit.
    absent = {name for name, r in plugin_states(installed, state, None).items() if r["state"] != "active"}
    full = {n: r for n, r in plugin_states(installed, state, caps).items() if n not in absent}
    # Every plugin runs but the opt-in ones, which name the capability they wait for ...
    missing = {name for name, r in full.items() if r["state"] != "active"}
    assert missing == opt_in_plugins() - absent, full
    for name in missing:
        assert full[name]["state"] == "unsupported"
        assert any(cap in full[name]["reason"] for cap in opt_in_capabilities(name)), full[name]
    # ... and run once it is granted (the README's drop-in adds exactly that).
    opted = plugin_states(installed, state, caps + [c for n in missing for c in opt_in_capabilities(n)])
    assert {name for name, r in opted.items() if r["state"] != "active"} == absent, opted
    gid = pwd.getpwnam(installed.user).pw_gid
    low, high = map(int, Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    for cap in caps:
        without = [c for c in caps if c != cap]
        if cap == "CAP_NET_RAW":
            # probes stays active without it; its ICMP socket is what changes.
            assert icmp_mode(installed, state, caps) in ("raw", "unprivileged")
            expected = "unprivileged" if low <= gid <= high else "unavailable"
            assert icmp_mode(installed, state, without) == expected
            continue
        states = plugin_states(installed, state, without)
        lost = {name for name, r in states.items() if r["state"] != "active"} - missing - absent
        assert lost, f"nothing needs {cap}: drop it from the unit and README"
        assert lost <= set(table[cap].plugins), (cap, lost, table[cap].plugins)
        for name in lost:
            assert cap in states[name]["reason"] or "CAP_" in states[name]["reason"], states[name]


def test_readme_unit_and_daemonset_capabilities_agree() -> None:
    rows = readme_rows()
    assert rows, "README has no capability table"
    unit_caps = sorted(unit_setting("AmbientCapabilities"))
    assert unit_caps == sorted(unit_setting("CapabilityBoundingSet"))
    assert unit_caps == sorted(r.capability for r in rows if r.in_unit)
    security = exporter_container()["securityContext"]["capabilities"]
    assert security["drop"] == ["ALL"]
    assert sorted("CAP_" + c for c in security["add"]) == sorted(r.capability for r in rows if r.in_daemonset)
    from importlib.metadata import entry_points

    plugins = {ep.name for ep in entry_points(group="crusoe_metrics_exporter")}
    for row in rows:
        assert set(row.plugins) <= plugins, row
