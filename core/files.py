"""The one way the exporter reads a kernel or user file: regular files only, bounded in size, never blocking.

Every read of procfs, sysfs, tracefs, a configuration file or the state
directory goes through here (a test walks the package and refuses any other
``open()``/``read_text()``), so all of them treat a FIFO, a device node, a
directory, a symlink loop or a runaway file put where a file belongs the same
way: an ``OSError`` naming the path and what is wrong with it, never a hang
or an unbounded allocation.

* The path is checked with ``stat`` *before* it is opened: opening a device
  node can have effects of its own (a watchdog starts counting, a tape
  rewinds), and opening a FIFO for reading blocks until a writer appears.
  The open itself is ``O_NONBLOCK`` and the descriptor is checked again, so a
  file swapped between the two calls is refused too.
* Reads stop at a limit. procfs files report size 0, so the limit, not the
  size, bounds them; :func:`read_limited` cuts a longer file before its last
  whole record, :func:`read_file` refuses it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

#: A diskstats or mounts line is ~100-120 bytes: 16 MiB is >100,000 records.
DEFAULT_READ_LIMIT = 16 * 1024 * 1024
#: Small files read whole: a sysctl, /proc/self/status, a tracefs id, a config file.
SMALL_FILE_LIMIT = 1024 * 1024


class FileContent(NamedTuple):
    data: bytes
    #: The file was longer than the limit; ``data`` ends before the first
    #: incomplete record.
    truncated: bool


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_regular(path: str | os.PathLike[str], mode: int) -> OSError:
    """The error for ``path`` being something other than a regular file (``mode`` from stat)."""
    kind = _kind(mode)
    text = kind if kind.startswith("not ") else f"{kind}, not a regular file"
    return OSError(errno.EINVAL, text, os.fspath(path))


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; raises OSError naming it otherwise.

    Symlinks are followed (procfs is full of them); a loop fails with ELOOP.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode)
    # O_NONBLOCK: if a FIFO replaced the file since the stat, the open must not hang;
    # regular files ignore the flag.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_char_device(path: str | os.PathLike[str]) -> int:
    """A descriptor of the character device ``path`` (read-only, non-blocking); raises OSError naming it otherwise.

    For the few device nodes read by design (/dev/kmsg, an NVMe controller's
    admin node): anything else put in their place is refused - checked before
    the open, so a FIFO never blocks it, and again on the descriptor.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISCHR(mode):
        raise _not_a_device(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISCHR(mode):
        os.close(fd)
        raise _not_a_device(path, mode)
    return fd


def _not_a_device(path: str | os.PathLike[str], mode: int) -> OSError:
    kind = "a regular file" if stat.S_ISREG(mode) else _kind(mode)
    text = "not a character device" if kind.startswith("not ") else f"{kind}, not a character device"
    return OSError(errno.ENODEV, text, os.fspath(path))


def read_limited(path: Path, limit: int = DEFAULT_READ_LIMIT, record_start: bytes = b"\n") -> FileContent:
    """Read up to ``limit`` bytes of ``path`` in one pass; raises OSError.

    A procfs file has no size, so it is read to EOF; the buffered reader
    loops over the short reads seq_file gives, and the kernel formats each
    record whole. When the file is longer than ``limit`` the data is cut
    before the last ``record_start`` (a newline for line-based files,
    ``b"\\ndevice "`` for mountstats blocks) so no half record is parsed.
    """
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) <= limit:
        return FileContent(data, False)
    cut = data.rfind(record_start, 0, limit)
    return FileContent(data[: cut + 1] if cut >= 0 else b"", True)


def read_file(path: str | os.PathLike[str], limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The whole of ``path``; raises OSError (EFBIG naming the file and the limit) when it is longer."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
    return data


def read_text(path: str | os.PathLike[str], limit: int = SMALL_FILE_LIMIT, errors: str = "replace") -> str:
    """:func:`read_file` decoded as UTF-8 (undecodable bytes replaced unless ``errors`` says otherwise)."""
    return read_file(path, limit).decode("utf-8", errors)


def iter_lines(path: str | os.PathLike[str], limit: int = DEFAULT_READ_LIMIT) -> Iterator[bytes]:
    """The lines of ``path``, streamed, stopping before ``limit`` bytes; raises OSError.

    For the big kernel lists read once (available_filter_functions,
    kallsyms) where only a few entries matter: nothing is kept. A line cut
    by the limit is not yielded, and no line is ever held longer than it.
    """
    with open_regular(path) as f:
        remaining = limit
        while remaining > 0:
            line = f.readline(remaining)
            remaining -= len(line)
            if not line or (remaining <= 0 and not line.endswith(b"\n")):
                return
            yield line
