"""Release hygiene: one version, `make dist` artefacts with checksums, changelog and migration page."""

from __future__ import annotations

import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers.kube import exporter_container

from crusoe_metrics_exporter import __version__

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]


def test_version_is_declared_once() -> None:
    """Only core/__init__.py spells the version; everything else reads it or is checked against it."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "crusoe_metrics_exporter.__version__" in pyproject
    assert exporter_container()["image"].endswith(f":{__version__}")
    assert "## Unreleased" in (REPO / "CHANGELOG.md").read_text() or f"## {__version__}" in (
        REPO / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_make_dist_builds_wheel_sdist_and_checksums() -> None:
    proc = subprocess.run(["make", "dist"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = REPO / "dist"
    wheel = dist / f"crusoe_metrics_exporter-{__version__}-py3-none-any.whl"
    sdist = dist / f"crusoe_metrics_exporter-{__version__}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in dist.iterdir())
    check = subprocess.run(["sha256sum", "--check", "SHA256SUMS"], cwd=dist, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(line.split()[1] for line in (dist / "SHA256SUMS").read_text().splitlines()) == sorted(
        [wheel.name, sdist.name])
    assert any(n.endswith("plugins/disk_latency/disk_latency.c") for n in zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    prefix = f"crusoe_metrics_exporter-{__version__}/"
    for wanted in ("CHANGELOG.md", "docs/migration.md", "deploy/Dockerfile", "deploy/kubernetes/base/daemonset.yaml",
                   "deploy/systemd/crusoe-metrics-exporter.service", "deploy/mixin/alerts.yaml"):
        assert prefix + wanted in names, wanted


def test_migration_page_covers_every_seed_variable() -> None:
    page = (REPO / "docs" / "migration.md").read_text()
    for heading in ("What stays identical", "What is fixed", "What is new", "DaemonSet"):
        assert heading in page
    seed_variables = ("PORT", "HOST_PROC_PATH", "MOUNTSTATS_PATH", "NFS_SERVER_IPS", "NFS_TARGET_PORTS",
                      "NFS_ENABLE_VOLUME_ID", "NFS_MOUNT_REFRESH_INTERVAL", "PROBE_INTERVAL",
                      "OBJSTORE_ENDPOINT_FQDN", "OBJSTORE_ENDPOINT_IPS", "OBJSTORE_ENDPOINT_PORT", "LOG_LEVEL",
                      "NODE_NAME")
    for variable in seed_variables:
        assert f"| `{variable}` |" in page, variable
