"""Waiting for the mount table to change, for a timeout, or for stop.

The kernel signals a change of a mount namespace's table on an open
``/proc/<pid>/mounts`` (or ``mountinfo``) with POLLPRI|POLLERR, once per
open file and change (proc(5)); the refresh thread blocks in one ``poll()``
on that file and on a stop pipe, so it wakes only when something happened or
a configured timer is due. A copy of the table on another file system (a
test's file, a non-procfs HOST_PROC_PATH) gives no notification: then
``watching`` is False and only the timer re-reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import select
import threading
from pathlib import Path
from typing import BinaryIO

from crusoe_metrics_exporter.files import open_regular

log = logging.getLogger(__name__)

#: statfs(2) f_type of procfs.
PROC_SUPER_MAGIC = 0x9FA0


class Wake(enum.Enum):
    CHANGED = "changed"
    TIMEOUT = "timeout"
    STOPPED = "stopped"


def on_procfs(path: Path) -> bool:
    """Whether ``path`` lives on procfs (only there does poll() report mount changes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    # struct statfs is 120 bytes on 64-bit Linux and starts with f_type (a
    # long); the buffer is larger so no architecture's layout can overrun it.
    buf = ctypes.create_string_buffer(256)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value == PROC_SUPER_MAGIC


class MountTableWatch:
    """One poll() on the mount table file (when it is on procfs) and a stop pipe."""

    def __init__(self, path: Path) -> None:
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Two poll sets: one also watching the table, one for stop alone (a
        # coalescing pause must not wake for every change of a burst; and a
        # registration with no events would still report POLLERR).
        self._poll = select.poll()
        self._poll.register(self._stop_r, select.POLLIN)
        self._poll_stop = select.poll()
        self._poll_stop.register(self._stop_r, select.POLLIN)
        # stop() may race close(): a closed descriptor's number can be reused.
        self._fd_lock = threading.Lock()
        self._closed = False
        self._table: BinaryIO | None = None
        self._table_fd = -1
        try:
            if on_procfs(path):
                # Opened before the first read of the table, so a change made
                # in between is still signalled. The reads themselves open
                # the file afresh (bounded); this descriptor is only polled,
                # never read. Opened like every other file (regular, non-blocking).
                self._table = open_regular(path)
                self._table_fd = self._table.fileno()
                self._poll.register(self._table_fd, select.POLLPRI)
        except OSError as exc:
            log.debug("target discovery: cannot watch %s (%s); re-read on the timer only", path, exc)

    @property
    def watching(self) -> bool:
        """True when a change of the mount table wakes ``wait`` at once."""
        return self._table is not None

    def wait(self, timeout: float | None, table: bool = True) -> Wake:
        """Block until the table changes (if ``table``), ``timeout`` seconds pass (None: forever) or ``stop()``."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        fds = {fd for fd, _ in (self._poll if table else self._poll_stop).poll(ms)}
        if self._stop_r in fds:
            return Wake.STOPPED
        if self._table_fd in fds:
            return Wake.CHANGED
        return Wake.TIMEOUT

    def consume(self) -> None:
        """Forget a change signalled but not yet waited for: call right before reading the table.

        poll() reports each change once per open file; what changes after
        this call is reported again, so nothing read here is read twice.
        """
        if self._table is not None:
            self._poll.poll(0)

    def stop(self) -> None:
        """Wake ``wait`` for good (safe from any thread, any number of times)."""
        with self._fd_lock:
            if self._closed:
                return
            # BlockingIOError: the pipe already holds a byte, the waiter is woken.
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")

    def close(self) -> None:
        with self._fd_lock:
            if self._closed:
                return
            self._closed = True
            if self._table is not None:
                self._table.close()
                self._table = None
            os.close(self._stop_r)
            os.close(self._stop_w)
