"""Fixtures for the disk_usage tests: the plugin's context over a /proc tree (from the testing kit), and a
FUSE filesystem whose statfs can be made to hang for real."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from crusoe_metrics_exporter.plugins import disk_usage
from crusoe_metrics_exporter.plugins.disk_usage import DiskUsageOptions
from crusoe_metrics_exporter.sdk import PluginContext
from crusoe_metrics_exporter.testing import PluginHarness

DATA = Path(__file__).parent / "data"
ERRORS = "disk_usage_collection_errors_total"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def make_ctx(plugin_harness: Callable[..., PluginHarness]) -> Callable[..., PluginContext[DiskUsageOptions]]:
    """``make_ctx(host_proc, options, collect_timeout, host_root)``: the context the exporter would hand disk_usage."""

    def build(host_proc: Path, options: Mapping[str, Any] | None = None, collect_timeout: float = 5.0,
              host_root: Path | None = None) -> PluginContext[DiskUsageOptions]:
        exporter_options = {"collect_timeout": f"{collect_timeout}s"}
        if host_root is not None:
            exporter_options["host_root_path"] = str(host_root)
        return plugin_harness(disk_usage, host_proc=host_proc, options=options,
                              exporter_options=exporter_options).context

    return build


@pytest.fixture
def host_mounts(tmp_path: Path) -> Callable[[bytes], Path]:
    """A /proc whose 1/mounts is the given text and whose 1/root is this machine's /."""

    def build(mounts: bytes) -> Path:
        proc = tmp_path / "proc"
        (proc / "1").mkdir(parents=True, exist_ok=True)
        (proc / "1" / "mounts").write_bytes(mounts)
        if not (proc / "1" / "root").is_symlink():
            (proc / "1" / "root").symlink_to("/")
        return proc

    return build


# -- a real FUSE filesystem speaking the kernel protocol over /dev/fuse ---------

_FUSE_INIT = 26
_FUSE_STATFS = 17
_FUSE_FORGET = 2
_FUSE_INTERRUPT = 36
_FUSE_BATCH_FORGET = 42
_FUSE_DESTROY = 38
_NO_REPLY = {_FUSE_FORGET, _FUSE_BATCH_FORGET, _FUSE_INTERRUPT}
_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV = 2, 4

#: What statfs reports when the filesystem answers.
FUSE_BLOCKS, FUSE_BFREE, FUSE_BAVAIL, FUSE_FILES, FUSE_FFREE, FUSE_BSIZE = 1000, 400, 300, 50, 20, 4096


class HangableFuse:
    """A FUSE filesystem served from a thread of the test process.

    While ``hold`` is set, STATFS requests are left unanswered: the caller's
    statfs(2) blocks in the kernel exactly as on a dead NFS server. ``release``
    answers them; closing the device aborts the connection (ENOTCONN).
    """

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.hold = threading.Event()
        self.statfs_requests = 0
        self._held: list[int] = []
        self._lock = threading.Lock()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = os.open("/dev/fuse", os.O_RDWR)
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0".encode()
        # The source name matches no disk_usage default, so other tests never pick it up.
        if self._libc.mount(b"h2-hangable-fuse", os.fsencode(mountpoint), b"fuse.h2hang", _MS_NOSUID | _MS_NODEV,
                            opts) != 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"mount fuse: {os.strerror(err)}")
        self._thread = threading.Thread(target=self._serve, name="fuse-server", daemon=True)
        self._thread.start()

    def _reply(self, unique: int, payload: bytes = b"", error: int = 0) -> None:
        os.write(self._fd, struct.pack("<IiQ", 16 + len(payload), -error, unique) + payload)

    def _statfs_payload(self) -> bytes:
        return struct.pack("<QQQQQIIII", FUSE_BLOCKS, FUSE_BFREE, FUSE_BAVAIL, FUSE_FILES, FUSE_FFREE,
                           FUSE_BSIZE, 255, FUSE_BSIZE, 0) + b"\0" * 24

    def _serve(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 1 << 20)
            except OSError:
                return  # device closed or connection aborted
            _length, opcode, unique = struct.unpack_from("<IIQ", buf)
            if opcode in _NO_REPLY:
                continue
            try:
                if opcode == _FUSE_INIT:
                    # fuse_init_out as of protocol 7.31 and later: 64 bytes; the kernel
                    # (7.45 here) accepts an older minor version from the server.
                    init = struct.pack("<IIIIHHIIHHII", 7, 31, 0, 0, 0, 0, 4096, 1, 0, 0, 0, 0) + b"\0" * 24
                    self._reply(unique, init)
                elif opcode == _FUSE_STATFS:
                    with self._lock:
                        self.statfs_requests += 1
                        if self.hold.is_set():
                            self._held.append(unique)
                            continue
                    self._reply(unique, self._statfs_payload())
                elif opcode == _FUSE_DESTROY:
                    self._reply(unique)
                    return
                else:
                    self._reply(unique, error=errno.ENOSYS)
            except OSError:
                continue  # the requester went away (interrupted); nothing to answer

    def release(self) -> None:
        with self._lock:
            self.hold.clear()
            held, self._held = self._held, []
        for unique in held:
            self._reply(unique, self._statfs_payload())

    def close(self) -> None:
        self.hold.clear()
        os.close(self._fd)  # aborts anything still pending: blocked callers get ENOTCONN
        self._libc.umount2(os.fsencode(self.mountpoint), _MNT_DETACH)
        self._thread.join(5)


@pytest.fixture
def hangable_fuse(tmp_path: Path) -> Iterator[HangableFuse]:
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.skip("LOUD SKIP: a real hung mount needs root and /dev/fuse; the hung-filesystem test cannot run")
    mountpoint = tmp_path / "hung"
    mountpoint.mkdir()
    fs = HangableFuse(mountpoint)
    try:
        yield fs
    finally:
        fs.close()
