"""Every shipped kustomization renders (kubectl kustomize) and every object validates offline.

Core objects are validated strictly (unknown fields rejected) against the
Kubernetes schemas kubernetes-validate ships, for the oldest and newest
releases we support; ServiceMonitor and PrometheusRule against the
prometheus-operator CRD schemas vendored in data/crds (see NOTICE.md).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers.kube import BASE, KUSTOMIZE_ROOT, OVERLAYS, daemonset, exporter_container, render

from crusoe_metrics_exporter import __version__

pytestmark = pytest.mark.deploy

KUBERNETES_VERSIONS = ("1.25.0", "1.30.0", kubernetes_validate.latest_version())
CRDS = Path(__file__).parent / "data" / "crds"
ALL = [BASE, *OVERLAYS]


def _strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as kubectl's strict field validation does."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schema(kind: str, version: str) -> dict[str, Any]:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != kind:
            continue
        for v in crd["spec"]["versions"]:
            if v["name"] == version:
                schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                # metadata is ObjectMeta, which the CRD leaves open.
                schema["properties"]["metadata"] = {"type": "object"}
                return cast(dict[str, Any], schema)
    raise AssertionError(f"no vendored CRD schema for {kind} {version}")


def validate(obj: dict[str, Any]) -> None:
    group_version = obj["apiVersion"]
    if group_version.startswith("monitoring.coreos.com/"):
        # Not jsonschema.validate: it checks the schema too, and Go regexes such as "^(?i)..." are not
        # Python ones (only fields our objects do not set use them).
        jsonschema.Draft7Validator(crd_schema(obj["kind"], group_version.split("/")[1])).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("kustomization", ALL, ids=lambda p: str(p.relative_to(KUSTOMIZE_ROOT)))
def test_every_rendered_object_validates(kustomization: Path) -> None:
    objects = render(kustomization)
    kinds = sorted(o["kind"] for o in objects)
    assert {"Namespace", "ServiceAccount", "DaemonSet", "Service"} <= set(kinds), kinds
    for obj in objects:
        validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "crusoe-metrics-exporter", obj["metadata"]


def test_the_validation_catches_a_misspelled_field() -> None:
    ds = copy.deepcopy(daemonset())
    ds["spec"]["template"]["spec"]["tolerationz"] = ds["spec"]["template"]["spec"].pop("tolerations")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(ds)
    (rule,) = [o for o in render(KUSTOMIZE_ROOT / "overlays" / "prometheus-operator") if o["kind"] == "PrometheusRule"]
    bad = copy.deepcopy(rule)
    bad["spec"]["groups"][0]["rules"][0]["recrod"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_daemonset_runs_everywhere_with_the_release_image() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["serviceAccountName"] == "crusoe-metrics-exporter"
    for container in spec["containers"] + spec["initContainers"]:
        assert container["image"].endswith(f":{__version__}"), container["image"]
        assert "limits" in container["resources"] and "requests" in container["resources"]


def test_exporter_container_probes_mounts_and_sandbox() -> None:
    container = exporter_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "crusoe-metrics-exporter.json"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts[env["HOST_ROOT_PATH"]]["mountPropagation"] == "HostToContainer"
    assert mounts[env["HOST_ROOT_PATH"]]["readOnly"] is True
    assert mounts[env["HOST_PROC_PATH"]]["readOnly"] is True
    # Writable: the state dir and /tmp, both emptyDirs; everything else read-only.
    volumes = {v["name"]: v for v in daemonset()["spec"]["template"]["spec"]["volumes"]}
    writable = sorted(path for path, m in mounts.items() if not m.get("readOnly"))
    assert writable == ["/tmp", "/var/lib/crusoe-metrics-exporter"]
    assert all("emptyDir" in volumes[mounts[p]["name"]] for p in writable)


def test_service_is_headless_and_selects_the_daemonset() -> None:
    (service,) = [o for o in render(BASE) if o["kind"] == "Service"]
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["name"] == "metrics"


def test_runtime_default_overlay_writes_nothing_to_the_node() -> None:
    overlay = KUSTOMIZE_ROOT / "overlays" / "runtime-default"
    spec = daemonset(overlay)["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert exporter_container(overlay)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("kubelet" not in v.get("hostPath", {}).get("path", "") for v in spec["volumes"])


def test_prometheus_operator_overlay_monitors_the_service() -> None:
    objects = render(KUSTOMIZE_ROOT / "overlays" / "prometheus-operator")
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    names = {r.get("alert") or r.get("record") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "CrusoeExporterDown" in names and any(re.match(r"instance_device:.*:p99_rate5m", n) for n in names)
