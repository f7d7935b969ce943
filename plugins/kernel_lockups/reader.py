"""A background reader of /dev/kmsg that counts records by kind.

It opens the device non-blocking, seeks to the end of the kernel's buffer
(reports from before the exporter started are not counted, as in the Go
exporter) and then waits in poll(2) on the device and a wake-up pipe, so
``stop`` ends it at once. Each read(2) returns one record. When the kernel
has overwritten records we had not read yet, read(2) fails with EPIPE and
the device moves on to the oldest record still there; the reader counts an
error, logs how many records were lost, and goes on. Any other failure
closes the device and reopens it (at the end) after ``retry_interval``.

A scrape only copies the counts under a lock: it never waits for the device.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from crusoe_metrics_exporter.plugins.kernel_lockups.parser import parse_record
from crusoe_metrics_exporter.sdk import open_char_device

#: Larger than the kernel's biggest record (CONSOLE_EXT_LOG_MAX, 8 KiB with its
#: dictionary); a smaller buffer makes read(2) fail with EINVAL.
READ_SIZE = 16 * 1024


def open_kmsg(path: Path) -> int:
    """Open ``path`` for reading, positioned after the last record; raises OSError.

    Anything but a character device is refused: a regular file or FIFO in its
    place would read as end-of-file or block, never as kernel records.
    """
    fd = open_char_device(path)
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        os.close(fd)
        raise
    return fd


class KmsgReader:
    def __init__(
        self,
        path: Path,
        *,
        classify: Callable[[bytes], str | None],
        kinds: Iterable[str],
        on_error: Callable[[str], None],
        log: logging.Logger,
        retry_interval: float = 5.0,
    ) -> None:
        self._log = log
        self._path = path
        self._classify = classify
        self._on_error = on_error
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(kinds, 0)
        self._records = 0
        self._fd: int | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sequence: int | None = None
        self._after_overrun = False

    # -- what a scrape reads ---------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def records_read(self) -> int:
        with self._lock:
            return self._records

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Open the device (raises OSError) and start the reading thread."""
        self._fd = open_kmsg(self._path)
        self._thread = threading.Thread(target=self._run, name="kmsg-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):  # a full pipe: the reader is being woken anyway
            os.write(self._wake_write, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_read = self._wake_write = -1

    # -- the thread --------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._fd is None:
                    self._fd = open_kmsg(self._path)
                    self._log.info("reading %s again", self._path)
                self._read_until_stopped(self._fd)
            except Exception as exc:  # noqa: BLE001 - the reader must survive anything; it reopens
                self._on_error(f"{self._path}: {exc}; reopening in {self._retry_interval:g}s")
                self._log.debug("kmsg reader failure", exc_info=True)
                self._close()
                self._stopping.wait(self._retry_interval)

    def _read_until_stopped(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopping.is_set():
            poller.poll()
            self._drain(fd)

    def _drain(self, fd: int) -> None:
        """Read records until the device has no more (EAGAIN)."""
        while not self._stopping.is_set():
            try:
                raw = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except BrokenPipeError:
                # Records we had not read were overwritten; the device now
                # points at the oldest record the kernel still has.
                self._after_overrun = True
                continue
            if not raw:
                raise OSError(errno.EIO, "unexpected end of file")
            self._record(raw)

    def _record(self, raw: bytes) -> None:
        record = parse_record(raw)
        if record is None:
            self._on_error(f"{self._path}: a record not in the /dev/kmsg format was skipped")
            return
        if self._after_overrun:
            self._after_overrun = False
            lost = record.sequence - self._last_sequence - 1 if self._last_sequence is not None else -1
            self._on_error(f"{self._path}: the kernel overwrote records before they were read"
                           + (f" ({lost} lost)" if lost > 0 else ""))
        self._last_sequence = record.sequence
        kind = self._classify(record.message)
        with self._lock:
            self._records += 1
            if kind is not None and kind in self._counts:
                self._counts[kind] += 1

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
