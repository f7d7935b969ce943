"""Reading a kernel text file (procfs, or a copy of it) whole, with a size limit.

Shared by the procfs plugins so that all of them treat a FIFO, a device node
or a runaway file put where a kernel file belongs the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

#: A diskstats or mounts line is ~100-120 bytes: 16 MiB is >100,000 records.
DEFAULT_READ_LIMIT = 16 * 1024 * 1024


class FileContent(NamedTuple):
    data: bytes
    #: The file was longer than the limit; ``data`` ends before the first
    #: incomplete record.
    truncated: bool


def read_limited(path: Path, limit: int = DEFAULT_READ_LIMIT, record_start: bytes = b"\n") -> FileContent:
    """Read up to ``limit`` bytes of ``path`` in one pass; raises OSError.

    A procfs file has no size, so it is read to EOF; the buffered reader
    loops over the short reads seq_file gives, and the kernel formats each
    record whole. When the file is longer than ``limit`` the data is cut
    before the last ``record_start`` (a newline for line-based files,
    ``b"\\ndevice "`` for mountstats blocks) so no half record is parsed.
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
    cut = data.rfind(record_start, 0, limit)
    return FileContent(data[: cut + 1] if cut >= 0 else b"", True)
