"""Rendering the shipped kustomizations (kubectl kustomize) and reading the exporter's DaemonSet out of them."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = REPO / "deploy" / "kubernetes"
BASE = KUSTOMIZE_ROOT / "base"
OVERLAYS = sorted(p.parent for p in (KUSTOMIZE_ROOT / "overlays").glob("*/kustomization.yaml"))


def require_kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("!!! DEPLOY TEST SKIPPED: kubectl is not installed (scripts/setup-system.sh --test) !!!")
    return kubectl


@cache
def render(kustomization: Path) -> tuple[dict[str, Any], ...]:
    """Every object ``kubectl kustomize`` renders from ``kustomization``."""
    proc = subprocess.run([require_kubectl(), "kustomize", str(kustomization)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {kustomization}: {proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def daemonset(kustomization: Path = BASE) -> dict[str, Any]:
    (ds,) = [d for d in render(kustomization) if d["kind"] == "DaemonSet"]
    return ds


def exporter_container(kustomization: Path = BASE) -> dict[str, Any]:
    (container,) = [c for c in daemonset(kustomization)["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "exporter"]
    return cast(dict[str, Any], container)
