"""Fixtures for disk_latency's real-kernel tests: a loop device and an eBPF gate."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def loop_device(require_ebpf: None) -> Iterator[str]:
    """A fresh 128 MiB loop device over a sparse file; yields its kernel name (loopN)."""
    yield from _loop_device("/var/tmp")


@pytest.fixture
def memory_loop_device(require_ebpf: None) -> Iterator[str]:
    """A loop device over a file in /dev/shm: its I/O never reaches a real disk (no second device's events)."""
    yield from _loop_device("/dev/shm")


def _loop_device(directory: str) -> Iterator[str]:
    if shutil.which("losetup") is None:
        pytest.skip("!!! EBPF TEST SKIPPED: losetup (util-linux) is not installed !!!")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
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
