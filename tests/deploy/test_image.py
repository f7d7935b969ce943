"""The container image, built for real and run with exactly the DaemonSet's security settings.

The image is built by deploy/image/build.py (podman; a Debian 12 base made
locally with mmdebstrap and cached outside the tree). The container gets
the rendered DaemonSet's host network and PID namespace, user, capabilities,
seccomp profile, read-only root file system, mounts, environment and
limits (helpers.podman.run_args); only the port, the loop device's name and
an object-store address are added so that every plugin has something to do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from helpers.capability_table import opt_in_plugins
from helpers.kube import KUSTOMIZE_ROOT, daemonset, exporter_container
from helpers.podman import built_image, podman, require_podman, run_args
from helpers.server import CLI, free_port
from prometheus_client.parser import text_string_to_metric_families

from crusoe_metrics_exporter import __version__

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

SECCOMP_REASON = "seccomp denies bpf() and perf_event_open(); use the shipped profile or Unconfined"
#: Plugins that need a target to be active at all.
TARGET_ENV = {"OBJSTORE_ENDPOINT_IPS": "127.0.0.1", "NFS_SERVER_IPS": "127.0.0.1"}


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    require_podman()
    with built_image() as tag:
        yield tag


def daemonset_args(tmp: Path, overlay: Path | None = None, env: dict[str, str] | None = None,
                   drop: str | None = None) -> list[str]:
    kustomization = overlay or KUSTOMIZE_ROOT / "base"
    pod = daemonset(kustomization)["spec"]["template"]["spec"]
    container = dict(exporter_container(kustomization))
    if drop:
        sc = dict(container["securityContext"])
        sc["capabilities"] = {**sc["capabilities"], "add": [c for c in sc["capabilities"]["add"] if c != drop]}
        container["securityContext"] = sc
    args = run_args(pod, container, tmp / "emptydirs")
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return args


def container_plugins(image: str, args: list[str]) -> dict[str, dict[str, Any]]:
    proc = podman("run", "--rm", *args, image, "plugins", "--json")
    return {r["name"]: r for r in json.loads(proc.stdout)}


def host_plugins(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    proc = subprocess.run([CLI, "plugins", "--json"], env={**os.environ, **env}, capture_output=True, text=True,
                          check=True)
    return {r["name"]: r for r in json.loads(proc.stdout)}


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(get(port, "/metrics")):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def diskstats_written_bytes(device: str) -> int:
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == device:
            return int(fields[9]) * 512
    raise AssertionError(f"{device} not in /proc/diskstats")


def test_image_is_slim_non_root_and_labelled(image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert config["Labels"]["org.opencontainers.image.source"].startswith("https://")
    assert info["Healthcheck"]["Test"][0] == "CMD"
    size_mb = info["Size"] / 1e6
    print(f"image size {size_mb:.0f} MB")
    assert size_mb < 400, size_mb  # python3-bpfcc's LLVM is ~290 MB of it
    # Nothing of the work tree but the wheels went in (no .venv, no sources).
    listing = podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c",
                     'ls /opt; test -z "$(ls -A /tmp)" && test ! -e /src && '
                     "test ! -e /opt/crusoe-metrics-exporter/bin/pip && echo clean")
    assert listing.stdout.split() == ["crusoe-metrics-exporter", "clean"], listing.stdout


def test_daemonset_settings_every_plugin_disk_usage_and_ebpf_counting(image: str, loop_device: str,
                                                                     tmp_path: Path) -> None:
    port = free_port()
    env = {**TARGET_ENV, "PORT": str(port), "PROBE_INTERVAL": "1s", "PROBE_JITTER": "0s", "PROBE_TIMEOUT": "1s"}
    args = daemonset_args(tmp_path, env=env)
    name = f"cme-test-{os.getpid()}"
    podman("run", "-d", "--name", name, *args, image, "serve",
           "--set", f"plugins.disk_latency.device_include=^{loop_device}$")
    try:
        began = time.monotonic()
        peak_rss = 0
        while True:
            peak_rss = max(peak_rss, _cgroup_memory(name).rss)
            try:
                get(port, "/ready")
                break
            except OSError:
                state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                assert state == "running", podman("logs", name).stderr[-3000:]
                assert time.monotonic() - began < 180, "the container did not become ready"
                time.sleep(0.2)
        started = time.monotonic() - began
        served = {r["name"]: r for r in json.loads(get(port, "/plugins.json"))}
        # Every plugin that the host itself (root, no sandbox) supports is active in the container.
        # Opt-in plugins (README "Capabilities") wait for a capability the DaemonSet does not grant.
        on_host = host_plugins(env)
        wanted = {n for n, r in on_host.items() if r["state"] == "active"} - opt_in_plugins()
        assert {n for n, r in served.items() if r["state"] == "active"} == wanted, {
            n: (r["state"], r["reason"]) for n, r in served.items() if r["state"] != "active"}
        for plugin in opt_in_plugins():
            assert served[plugin]["state"] == "unsupported" and served[plugin]["fix"], served[plugin]

        # disk_usage: the host's filesystems through HOST_ROOT_PATH, with the host's numbers.
        assert served["disk_usage"]["details"]["statfs_root"] == "/host/root (HOST_ROOT_PATH)"
        series = metrics(port)
        root_dev = next(line.split()[0] for line in Path("/proc/1/mounts").read_text().splitlines()
                        if line.split()[1] == "/").removeprefix("/dev/")
        st = os.statvfs("/")
        labels = frozenset({("device", root_dev), ("mount_point", "/")})
        assert series[("crusoe_vm_disk_bytes_total", labels)] == st.f_blocks * st.f_frsize
        assert series[("crusoe_vm_disk_inodes_total", labels)] == st.f_files
        assert series[("crusoe_vm_disk_filesystem_readonly", labels)] == 0

        # eBPF counts I/O on a loop device the host drives, exactly as the kernel's diskstats do.
        key = ("crusoe_vm_disk_write_bytes_total", frozenset({("device", loop_device)}))
        before, stats_before = series.get(key, 0.0), diskstats_written_bytes(loop_device)
        subprocess.run(["dd", "if=/dev/zero", f"of=/dev/{loop_device}", "bs=4k", "count=256", "oflag=direct",
                        "status=none"], check=True, timeout=60)
        written = diskstats_written_bytes(loop_device) - stats_before
        assert written == 256 * 4096
        assert metrics(port)[key] - before == written

        # ICMP from the container (NET_RAW, the seccomp profile) reaches the host's loopback.
        icmp = frozenset({("probe", "icmp"), ("target", "nfs"), ("endpoint", "127.0.0.1"), ("port", "")})
        deadline = time.monotonic() + 30
        while metrics(port).get(("crusoe_vm_probe_success", icmp)) != 1.0:
            assert time.monotonic() < deadline, sorted(k for k in metrics(port) if k[0] == "crusoe_vm_probe_success")
            time.sleep(0.5)

        health = podman("healthcheck", "run", name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        memory = _cgroup_memory(name)
        limit = _quantity_mib(exporter_container()["resources"]["limits"]["memory"])
        request = _quantity_mib(exporter_container()["resources"]["requests"]["memory"])
        print(f"container ready in {started:.1f}s; resident now {memory.rss / 2**20:.1f} MiB, peak resident "
              f"seen {peak_rss / 2**20:.1f} MiB, cgroup peak with page cache {memory.peak / 2**20:.1f} MiB")
        # The manifest's sizing holds what was measured: serving fits the request, start-up the limit.
        assert memory.rss / 2**20 < request, (memory.rss, request)
        assert peak_rss / 2**20 < limit * 0.8, (peak_rss, limit)
    finally:
        stopped = time.monotonic()
        podman("stop", "-t", "10", name, check=False)
        stop_seconds = time.monotonic() - stopped
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False).stdout.strip()
        podman("rm", "-f", name, check=False)
    assert code == "0", f"exit code {code} after SIGTERM"
    assert stop_seconds < 9, stop_seconds


class CgroupMemory(NamedTuple):
    rss: int
    peak: int


def _cgroup_memory(name: str) -> CgroupMemory:
    """Resident (anonymous) memory of the container's cgroup now, and its peak usage including page cache."""
    path = podman("inspect", "--format", "{{.State.CgroupPath}}", name, check=False).stdout.strip()
    v1 = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    v2 = Path("/sys/fs/cgroup") / path.lstrip("/")
    try:
        if (v1 / "memory.stat").exists():
            stat = dict(line.split() for line in (v1 / "memory.stat").read_text().splitlines())
            return CgroupMemory(int(stat["total_rss"]), int((v1 / "memory.max_usage_in_bytes").read_text()))
        stat = dict(line.split() for line in (v2 / "memory.stat").read_text().splitlines())
        return CgroupMemory(int(stat["anon"]), int((v2 / "memory.peak").read_text()))
    except (OSError, KeyError, ValueError):
        return CgroupMemory(0, 0)


def _quantity_mib(text: str) -> float:
    assert text.endswith("Mi"), text
    return float(text[:-2])


def test_runtime_default_seccomp_gives_one_clear_reason(image: str, tmp_path: Path) -> None:
    overlay = KUSTOMIZE_ROOT / "overlays" / "runtime-default"
    plugins = container_plugins(image, daemonset_args(tmp_path, overlay, TARGET_ENV))
    for name in ("disk_latency", "nfs_latency", "objstore"):
        assert plugins[name]["state"] == "unsupported"
        assert plugins[name]["reason"] == SECCOMP_REASON, plugins[name]
        assert "seccomp" in plugins[name]["fix"]
    assert plugins["disk_stats"]["state"] == "active"


def _shipped_capabilities() -> list[str]:
    """The DaemonSet's added capabilities, read from the file (collection must not need kubectl)."""
    ds = yaml.safe_load((KUSTOMIZE_ROOT / "base" / "daemonset.yaml").read_text())
    (container,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "exporter"]
    return list(container["securityContext"]["capabilities"]["add"])


@pytest.mark.parametrize("capability", _shipped_capabilities())
def test_each_daemonset_capability_is_needed(image: str, tmp_path: Path, capability: str) -> None:
    args = daemonset_args(tmp_path, env=TARGET_ENV, drop=capability)
    if capability == "NET_RAW":
        # probes stays active; its ICMP socket is what needs it (group 0 outside ping_group_range).
        low, high = map(int, Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
        probe = podman("run", "--rm", *args, "--entrypoint", "/opt/crusoe-metrics-exporter/bin/python", image, "-c",
                       "from crusoe_metrics_exporter.plugins.probes.icmp import detect_mode; print(detect_mode(4))")
        assert probe.stdout.strip() == ("unprivileged" if low <= 0 <= high else "None"), probe.stdout
        return
    plugins = container_plugins(image, args)
    lost = {n for n, r in plugins.items() if r["state"] != "active"} - opt_in_plugins()
    assert lost == {"disk_latency", "nfs_latency", "objstore"}, plugins
    assert all(re.search(r"CAP_", plugins[n]["reason"]) for n in lost)


def test_image_default_user_runs_every_plugin_with_ambient_capabilities(image: str, tmp_path: Path) -> None:
    """Non-root where the runtime allows: podman hands a non-root user its added capabilities as ambient ones.

    Kubernetes does not (so the DaemonSet runs uid 0 with everything else
    dropped); as the image's own user the systemd set is needed, DAC_READ_SEARCH included.
    """
    args = daemonset_args(tmp_path, env=TARGET_ENV)
    user = args.index("--user")
    del args[user:user + 2]  # the image's default user, 10001
    args += ["--cap-add", "DAC_READ_SEARCH"]
    plugins = container_plugins(image, args)
    assert {n for n, r in plugins.items() if r["state"] != "active"} == opt_in_plugins(), plugins
