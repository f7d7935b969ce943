"""Building the exporter's image and running it under podman with a DaemonSet's exact settings.

:func:`run_args` translates one container of a rendered DaemonSet into
``podman run`` flags, field by field, and refuses any field it does not
know, so the tests cannot silently run the image with other settings than
the manifest ships.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "image" / "build.py"
SECCOMP_DIR = REPO / "deploy" / "seccomp"
#: The repository of the images the tests build; each run tags its own (test-<random>), removed afterwards.
TEST_REPOSITORY = "localhost/crusoe-metrics-exporter"


def require_podman() -> None:
    if os.geteuid() != 0:
        pytest.skip("!!! DEPLOY TEST SKIPPED: building and running the image needs root !!!")
    for tool in ("podman", "mmdebstrap", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"!!! DEPLOY TEST SKIPPED: {tool} is not installed (scripts/setup-system.sh --test) !!!")


def podman_env() -> dict[str, str]:
    conf = subprocess.run([sys.executable, str(BUILD), "--print-containers-conf"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return {**os.environ, "CONTAINERS_CONF": conf}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return proc


@contextmanager
def built_image() -> Iterator[str]:
    """The image built from this tree under a tag of this run's own, removed again afterwards.

    One tag per run: concurrent runs never replace (or remove) each other's image, and a run
    leaves no image behind, neither its own nor one it untagged (a build under a shared tag
    leaves the previous image there, untagged, ~385 MB a run). ``podman rmi`` also removes the
    build's intermediate layers that no other image uses; the Debian base stays cached.
    """
    tag = f"{TEST_REPOSITORY}:test-{secrets.token_hex(6)}"
    image_id = ""
    try:
        proc = subprocess.run([sys.executable, str(BUILD), "--tag", tag], capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        image_id = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        # --force: containers a failed test left behind go too; the tag is this run's alone.
        removed = podman("rmi", "--force", "--ignore", tag, check=False, timeout=300)
    if image_id:
        left = podman("image", "exists", image_id, check=False)
        assert left.returncode == 1, f"the image this run built ({image_id[:12]}) is still there: {removed.stderr}"


_KNOWN_SECURITY = {"runAsUser", "runAsGroup", "runAsNonRoot", "privileged", "allowPrivilegeEscalation",
                   "readOnlyRootFilesystem", "capabilities", "seccompProfile"}
_IGNORED_CONTAINER = {"name", "image", "ports", "readinessProbe", "livenessProbe", "resources", "securityContext",
                      "volumeMounts", "env", "args", "command"}


def _quantity_bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def _cpus(text: str) -> str:
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def run_args(pod: dict[str, Any], container: dict[str, Any], emptydir_root: Path,
             seccomp_override: str | None = None) -> list[str]:
    """``podman run`` flags for ``container`` of pod spec ``pod`` (no image, no command)."""
    unknown = set(container) - _IGNORED_CONTAINER
    assert not unknown, f"run_args does not know how to apply {unknown}"
    args: list[str] = []
    if pod.get("hostNetwork"):
        args += ["--network", "host"]
    if pod.get("hostPID"):
        args += ["--pid", "host"]
    sc = container.get("securityContext", {})
    assert set(sc) <= _KNOWN_SECURITY, f"run_args does not know {set(sc) - _KNOWN_SECURITY}"
    assert not sc.get("privileged")
    if "runAsUser" in sc:
        args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        # podman adds tmpfs mounts of its own to a read-only container; Kubernetes does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
    caps = sc.get("capabilities", {})
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap.lower()]
    for cap in caps.get("add", []):
        args += ["--cap-add", cap]
    seccomp = sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile") or {}
    kind = seccomp.get("type", "Unconfined")
    if seccomp_override is not None:
        args += ["--security-opt", f"seccomp={seccomp_override}"]
    elif kind == "Localhost":
        # The kubelet resolves it under <root>/seccomp/; the init container puts the shipped file there.
        assert seccomp["localhostProfile"] == "crusoe-metrics-exporter.json"
        args += ["--security-opt", f"seccomp={SECCOMP_DIR / 'crusoe-metrics-exporter.json'}"]
    elif kind == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    else:
        assert kind == "RuntimeDefault", kind  # podman's own default profile
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        args += ["--memory", str(_quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", _cpus(limits["cpu"])]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            options = ["ro" if mount.get("readOnly") else "rw"]
            if mount.get("mountPropagation") == "HostToContainer":
                options.append("rslave")
            args += ["-v", f"{volume['hostPath']['path']}:{mount['mountPath']}:{','.join(options)}"]
        else:
            assert set(volume) == {"name", "emptyDir"}, volume
            # An emptyDir is an empty, world-writable directory on the node.
            path = emptydir_root / mount["name"]
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o1777)
            args += ["-v", f"{path}:{mount['mountPath']}:rw"]
    for env in container.get("env", []):
        if "value" in env:
            args += ["-e", f"{env['name']}={env['value']}"]
        elif env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            args += ["-e", f"{env['name']}={os.uname().nodename}"]
        else:
            raise AssertionError(f"run_args cannot resolve {env}")
    if "command" in container:
        args += ["--entrypoint", container["command"][0]]
    return args
