"""Reading a kernel text file whole, with a size limit."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

#: A mounts line is ~100 bytes; 16 MiB is well over 100,000 mounts.
DEFAULT_READ_LIMIT = 16 * 1024 * 1024


class FileContent(NamedTuple):
    data: bytes
    #: The file was longer than the limit; ``data`` ends at the last full line.
    truncated: bool


def read_limited(path: Path, limit: int = DEFAULT_READ_LIMIT) -> FileContent:
    """Read up to ``limit`` bytes of ``path`` in one pass; raises OSError.

    A procfs file has no size, so it is read to EOF; the buffered reader
    loops over the short reads seq_file gives. The kernel formats each line
    whole, so a line is always self-consistent; a device added or removed
    between two of those reads can at worst be missed or repeated once
    (a repeated mount is reported once).
    """
    # O_NONBLOCK: a FIFO put where a kernel file belongs must not hang the
    # open; procfs and regular files ignore the flag.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        data = f.read(limit + 1)
    if len(data) <= limit:
        return FileContent(data, False)
    cut = data.rfind(b"\n", 0, limit)
    return FileContent(data[: cut + 1] if cut >= 0 else b"", True)
