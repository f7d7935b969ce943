"""Run as a real unprivileged user holding only some capabilities (setpriv), as a systemd unit or a container does.

A tracefs or /proc/1/* that exists but is unreadable must be reported as
such ("unreadable: needs CAP_DAC_READ_SEARCH") with the fix, in ``plugins``,
``doctor`` and ``/`` alike; never as "tracefs is not mounted".
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.privileges import USER, setpriv
from helpers.server import CLI, running_exporter

pytestmark = pytest.mark.deploy

UNREADABLE = "unreadable: needs CAP_DAC_READ_SEARCH"
GRANT = "AmbientCapabilities=CAP_DAC_READ_SEARCH"


@pytest.fixture
def unprivileged_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("!!! DEPLOY TEST SKIPPED: dropping to an unprivileged user needs root and setpriv !!!")
    state = tmp_path_factory.mktemp("unprivileged-state")
    os.chown(state, pwd.getpwnam(USER).pw_uid, -1)
    # The merged header tree is built in the state dir, which this user must own.
    yield {**os.environ, "CRUSOE_EXPORTER_STATE_DIR": str(state)}


def run_cli(caps: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*setpriv(caps), CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def plugin_table(caps: list[str], env: dict[str, str]) -> dict[str, dict[str, str]]:
    proc = run_cli(caps, env, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: r for r in json.loads(proc.stdout)}


def test_unreadable_tracefs_and_mountstats_are_named_with_the_fix(unprivileged_env: dict[str, str]) -> None:
    tracefs = Path("/sys/kernel/tracing")
    if not (tracefs / "events").exists() or tracefs.stat().st_mode & 0o077:
        pytest.skip("!!! DEPLOY TEST SKIPPED: needs tracefs mounted with mode 0700 at /sys/kernel/tracing !!!")
    table = plugin_table(["CAP_BPF", "CAP_PERFMON"], unprivileged_env)
    for name, path in (("disk_latency", "/sys/kernel/tracing"), ("nfs_stats", "/proc/1/mountstats")):
        rec = table[name]
        assert rec["state"] == "unsupported", rec
        assert rec["reason"].startswith(f"{path} is {UNREADABLE}"), rec
        assert "not mounted" not in rec["reason"]
        assert GRANT in rec["fix"] and "DAC_READ_SEARCH]" in rec["fix"], rec

    doctor = run_cli(["CAP_BPF", "CAP_PERFMON"], unprivileged_env, "doctor")
    assert doctor.returncode != 0
    lines = doctor.stdout.splitlines()
    for check in ("tracefs: /sys/kernel/tracing is", "plugin nfs_stats: unsupported: /proc/1/mountstats is"):
        at = next(i for i, line in enumerate(lines) if check in line)
        assert lines[at].startswith("[FAIL]") and UNREADABLE in lines[at], lines[at]
        assert GRANT in lines[at + 1] and "fix:" in lines[at + 1], lines[at + 1]

    with running_exporter(env=unprivileged_env, wrapper=setpriv(["CAP_BPF", "CAP_PERFMON"])) as exporter:
        _status, _ctype, page = exporter.get("/")
        _status, _ctype, body = exporter.get("/plugins.json")
    assert page.count(UNREADABLE) >= 2 and GRANT in page
    served = {r["name"]: r for r in json.loads(body)}
    assert served["disk_latency"]["fix"] == table["disk_latency"]["fix"]


def test_no_capabilities_names_the_missing_ebpf_capabilities(unprivileged_env: dict[str, str]) -> None:
    table = plugin_table([], unprivileged_env)
    rec = table["disk_latency"]
    assert rec["state"] == "unsupported"
    assert "needs CAP_BPF and CAP_PERFMON" in rec["reason"] and "uid 65534" in rec["reason"]
    assert "AmbientCapabilities" in rec["fix"]
