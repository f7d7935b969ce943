"""Fixtures for disk_latency's real-kernel tests: a loop device and an eBPF gate."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def ebpf_impossible_reason() -> str | None:
    """Why real eBPF cannot run here at all (then, and only then, the tests skip)."""
    if os.geteuid() != 0:
        return "not running as root"
    from crusoe_metrics_exporter.ebpf.bcc_locator import BccMissing, locate

    try:
        locate()
    except BccMissing as exc:
        return str(exc)
    return None


@pytest.fixture
def require_ebpf() -> None:
    reason = ebpf_impossible_reason()
    if reason:
        pytest.skip(f"!!! EBPF TEST SKIPPED: real eBPF is impossible here: {reason} !!!")


@pytest.fixture
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One merged header tree per test session keeps the suite fast.
    return tmp_path_factory.getbasetemp() / "ebpf-state"


@pytest.fixture
def loop_device(require_ebpf: None) -> Iterator[str]:
    """A fresh 128 MiB loop device over a sparse file; yields its kernel name (loopN)."""
    if shutil.which("losetup") is None:
        pytest.skip("!!! EBPF TEST SKIPPED: losetup (util-linux) is not installed !!!")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        backing = Path(tmp) / "disk.img"
        with backing.open("wb") as fh:
            fh.truncate(128 * 1024 * 1024)
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            yield os.path.basename(dev)
        finally:
            subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture
def diskstats() -> object:
    return diskstats_line


def diskstats_line(name: str) -> list[int]:
    """The numeric fields of ``name``'s /proc/diskstats line (index 0 = reads completed)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == name:
            return [int(f) for f in fields[3:]]
    raise AssertionError(f"{name} is not in /proc/diskstats")
