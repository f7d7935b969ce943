"""The object-store FQDN derived from NODE_NAME (seed §2.3), with the Go exporter's precedence bug fixed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.server import CLI

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.settings import Overrides
from crusoe_metrics_exporter.targets.directory import TargetDirectory
from crusoe_metrics_exporter.targets.dns import Resolver
from crusoe_metrics_exporter.targets.region import NoRegion, objstore_endpoint, region_from_node_name

from .test_targets_directory import FakeDns


@pytest.mark.parametrize(
    ("node_name", "region"),
    [
        # The Go exporter's cases.
        ("np-88fe80e2-1.us-west1-a.compute.internal", "us-west1-a"),
        ("node.us-west1-a", "us-west1-a"),
        # Case does not matter in DNS; a trailing domain is ignored however deep.
        ("node.US-East1-B.a.b.c", "us-east1-b"),
        ("  node.eu1  ", "eu1"),
    ],
)
def test_region_from_node_name(node_name: str, region: str) -> None:
    assert region_from_node_name(node_name) == region
    assert objstore_endpoint(region) == f"object.{region}.crusoecloudcompute.com"


@pytest.mark.parametrize(
    ("node_name", "why"),
    [
        # The Go exporter's error cases.
        ("prefix.", "has no region"),
        ("just-a-hostname", "has no region"),
        ("", "is empty"),
        # Accepted by the Go exporter, which then resolved a name no resolver takes.
        ("node.us_west.x", "not a DNS label"),
        ("node.-us.x", "not a DNS label"),
        ("node." + "a" * 64 + ".x", "not a DNS label"),
        ("node.reg ion.x", "not a DNS label"),
    ],
)
def test_no_region(node_name: str, why: str) -> None:
    with pytest.raises(NoRegion, match=why):
        region_from_node_name(node_name)


def _exporter(tmp_path: Path, **env: str) -> Exporter:
    """No plugins; the targets service found through its entry point, its settings resolved from ``env``."""
    (tmp_path / "1").mkdir(exist_ok=True)
    (tmp_path / "1" / "mounts").write_text("")
    return Exporter.from_environment(None, Overrides({}), {"HOST_PROC_PATH": str(tmp_path), **env}, [])


def _directory(exporter: Exporter, resolver: Resolver) -> TargetDirectory:
    [targets] = [r for r in exporter.service_records if r.name == "targets"]
    return TargetDirectory(targets.options, Path(exporter.settings.core["host_proc_path"]), resolver=resolver)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_derived_only_when_no_fqdn_is_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _exporter(tmp_path, NODE_NAME="np-1.us-west1-a.compute.internal").settings
    assert settings.services["targets"]["objstore_endpoint_fqdn"] == "object.us-west1-a.crusoecloudcompute.com"
    assert settings.sources["targets.objstore_endpoint_fqdn"] == "derived from node_name (environment NODE_NAME)"
    settings = _exporter(tmp_path, NODE_NAME="np-1.us-west1-a.x", OBJSTORE_ENDPOINT_FQDN="s3.example").settings
    assert settings.services["targets"]["objstore_endpoint_fqdn"] == "s3.example"
    assert settings.sources["targets.objstore_endpoint_fqdn"] == "environment OBJSTORE_ENDPOINT_FQDN"
    settings = _exporter(tmp_path).settings
    assert settings.services["targets"]["objstore_endpoint_fqdn"] == ""
    assert _warnings(caplog) == []


def test_bad_node_name_is_one_warning_and_the_ips_stay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exporter = _exporter(tmp_path, NODE_NAME="just-a-hostname", OBJSTORE_ENDPOINT_IPS="10.1.2.3")
    assert exporter.settings.services["targets"]["objstore_endpoint_fqdn"] == ""
    assert _warnings(caplog) == ["NODE_NAME='just-a-hostname' has no region: expected <node>.<region>[.<domain>]; "
                                 "no object-store FQDN derived (OBJSTORE_ENDPOINT_IPS is used)"]
    d = _directory(exporter, FakeDns({}))
    try:
        assert [e.address for e in d.objstore_endpoints()] == ["10.1.2.3"]
    finally:
        d.stop()


def test_derived_name_that_does_not_resolve_falls_back_to_the_ips(tmp_path: Path) -> None:
    # The Go exporter used OBJSTORE_ENDPOINT_IPS only when no region could be
    # derived; a derived name whose lookup failed left it with no endpoint.
    exporter = _exporter(tmp_path, NODE_NAME="np-1.us-west1-a.compute.internal", OBJSTORE_ENDPOINT_IPS="10.1.2.3")
    dns = FakeDns({})
    d = _directory(exporter, dns)
    try:
        assert [(e.address, e.fqdn) for e in d.objstore_endpoints()] == [("10.1.2.3", "")]
        assert dns.calls == ["object.us-west1-a.crusoecloudcompute.com"]
        # Once the name resolves, its addresses replace the fallback.
        dns.table["object.us-west1-a.crusoecloudcompute.com"] = ["10.9.0.1"]
        assert d.refresh_now()
        assert [(e.address, e.fqdn) for e in d.objstore_endpoints()] == [
            ("10.9.0.1", "object.us-west1-a.crusoecloudcompute.com")]
    finally:
        d.stop()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OBJSTORE_", "NODE_NAME"))}
    return subprocess.run([CLI, *args], env={**full, **env}, capture_output=True, text=True, timeout=60)


def test_config_show_names_the_derived_value_and_its_source() -> None:
    result = _cli("config", "show", NODE_NAME="np-88fe80e2-1.us-west1-a.compute.internal")
    assert result.returncode == 0, result.stderr
    assert ('objstore_endpoint_fqdn = "object.us-west1-a.crusoecloudcompute.com"  '
            "# derived from node_name (environment NODE_NAME)") in result.stdout.splitlines()
    shown = json.loads(_cli("config", "show", "--json", NODE_NAME="n.eu1").stdout)
    assert shown["targets"]["objstore_endpoint_fqdn"] == {
        "value": "object.eu1.crusoecloudcompute.com", "source": "derived from node_name (environment NODE_NAME)"}


def test_bad_node_name_is_one_log_line_not_a_failure() -> None:
    result = _cli("config", "show", NODE_NAME="just-a-hostname", OBJSTORE_ENDPOINT_IPS="10.1.2.3")
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "NODE_NAME='just-a-hostname' has no region" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
