"""Block I/O the eBPF tests make: direct writes through the page cache's back door, and fsync loops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Writes one 4 KiB block and fsyncs it, N times: each fsync of a block device
#: is a data write plus an empty pre-flush write (run with python -c).
FSYNC_LOOP = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(int(sys.argv[2])):
    os.pwrite(fd, b"x" * 4096, (i % 64) * 4096)
    os.fsync(fd)
os.close(fd)
"""


def fsync_loop(device: str, fsyncs: int, python: str = sys.executable, timeout: float = 120) -> None:
    subprocess.run([python, "-c", FSYNC_LOOP, device, str(fsyncs)], check=True, timeout=timeout)


def direct_writes(count: int, directory: str = "/var/tmp") -> None:
    """``count`` 4 KiB O_DIRECT writes to a scratch file on the disk under ``directory``."""
    target = Path(directory) / f"cme-direct-writes-{os.getpid()}"
    try:
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=4k", f"count={count}", "oflag=direct", "status=none"],
            check=True,
            timeout=60,
        )
    finally:
        target.unlink(missing_ok=True)
