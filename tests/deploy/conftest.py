"""Fixtures shared by the deployment tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def loop_device() -> Iterator[str]:
    """A fresh 64 MiB loop device on the host over a sparse file; yields its kernel name (loopN)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("!!! DEPLOY TEST SKIPPED: a loop device needs root and losetup !!!")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        backing = Path(tmp) / "disk.img"
        with backing.open("wb") as fh:
            fh.truncate(64 * 1024 * 1024)
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                             check=True).stdout.strip()
        try:
            yield os.path.basename(dev)
        finally:
            subprocess.run(["losetup", "-d", dev], check=False)
