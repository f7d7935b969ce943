"""Boot the guest image in QEMU, run one command inside, return its exit code and output.

The guest gets no network device (``-nic none``); the checkout is shared
read-only over 9p (tag ``cmesrc``) and a per-run directory read-write (tag
``cmeout``) carries the request in and the exit code out. The root disk is
opened with ``snapshot=on``: everything the guest writes goes to a
throw-away overlay and the cached image never changes. A scratch virtio disk
(``/dev/vdb``, serial ``cme-scratch``) and a QEMU-emulated NVMe controller
(``/dev/nvme0n1``, serial ``cme-nvme-0``) are attached for disk tests.

QEMU runs in its own process group with a hard timeout; on timeout, error,
Ctrl-C or interpreter exit the whole group is killed, so no QEMU is ever
left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.vm.image import REPO_ROOT, Image

QEMU = "qemu-system-x86_64"
SCRATCH_SERIAL = "cme-scratch"
NVME_SERIAL = "cme-nvme-0"
#: Exit code reported when the guest never wrote one (crash, hang, kill).
NO_EXIT_CODE = 255
KVM_MODULES = (Path("/sys/module/kvm_intel"), Path("/sys/module/kvm_amd"))


class GuestError(Exception):
    """The guest could not be run; ``str()`` says why in one line."""


@dataclass(frozen=True)
class GuestResult:
    exit_code: int
    #: Everything the guest printed on its serial console (kernel and command).
    console: str
    seconds: float
    timed_out: bool
    #: The per-run directory shared as ``cmeout`` (kept until the caller is done).
    out_dir: Path


@dataclass(frozen=True)
class BootOptions:
    memory_mb: int = 2048
    cpus: int = 2
    timeout: float = 900.0
    scratch_mb: int = 256
    nvme_mb: int = 64
    extra_cmdline: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def kvm_usable() -> bool:
    """A real KVM: /dev/kvm backed by kvm_intel or kvm_amd.

    Some hosts offer a /dev/kvm for paravirtualised guests only (kvm_pvm):
    Debian's stock kernel fails there with emulation errors, so it counts as none.
    """
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and any(m.is_dir() for m in KVM_MODULES)


def qemu_missing() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (scripts/setup-system.sh --test installs qemu-system-x86)"
    return None


def qemu_command(image: Image, out_dir: Path, options: BootOptions, source: Path = REPO_ROOT) -> list[str]:
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    cmdline = ["root=/dev/vda", "rw", "console=ttyS0", "quiet", "loglevel=4", "init=/sbin/cme-init", "panic=-1",
               *options.extra_cmdline]
    share = "security_model=none,multidevs=remap"
    return [
        QEMU, "-machine", "pc", *accel, "-smp", str(options.cpus), "-m", str(options.memory_mb),
        "-nic", "none", "-no-reboot", "-nodefaults", "-display", "none", "-monitor", "none",
        "-serial", "stdio",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", " ".join(cmdline),
        # Devices get PCI slots in the order given, and virtio disks their
        # names in slot order: the root disk first is /dev/vda.
        "-drive", f"file={image.rootfs},if=none,id=root,format=raw,snapshot=on",
        "-device", "virtio-blk-pci,drive=root,serial=cme-root",
        "-drive", f"file={out_dir / 'scratch.img'},if=none,id=scratch,format=raw",
        "-device", f"virtio-blk-pci,drive=scratch,serial={SCRATCH_SERIAL}",
        "-drive", f"file={out_dir / 'nvme.img'},if=none,id=nvm,format=raw",
        "-device", f"nvme,serial={NVME_SERIAL},drive=nvm",
        "-virtfs", f"local,path={source},mount_tag=cmesrc,{share},readonly=on",
        "-virtfs", f"local,path={out_dir},mount_tag=cmeout,{share}",
    ]


_live: set[subprocess.Popen[bytes]] = set()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    _live.discard(proc)


@atexit.register
def _kill_all() -> None:
    for proc in list(_live):
        _kill_group(proc)


@contextlib.contextmanager
def process_group(argv: Sequence[str], **popen: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in a new process group that is SIGKILLed on leaving, whatever happens."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(list(argv), start_new_session=True, **popen)  # type: ignore[call-overload]
    _live.add(proc)
    try:
        yield proc
    finally:
        _kill_group(proc)


def run_with_timeout(argv: Sequence[str], timeout: float, echo: IO[str] | None) -> tuple[int | None, str, bool]:
    """Run ``argv`` with stdout+stderr captured (and echoed live); returns (status, output, timed out)."""
    chunks: list[str] = []

    def pump(stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").replace("\r\n", "\n")
            chunks.append(line)
            if echo is not None:
                echo.write(line)
                echo.flush()

    with process_group(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            status: int | None = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            status, timed_out = None, True
    reader.join(timeout=5)
    return status, "".join(chunks), timed_out


def run(
    image: Image,
    argv: Sequence[str],
    options: BootOptions | None = None,
    echo: IO[str] | None = sys.stdout,
    out_dir: Path | None = None,
) -> GuestResult:
    """Boot the guest, run ``argv`` in the shared checkout as root, power off; raises GuestError."""
    options = options or BootOptions()
    problem = qemu_missing()
    if problem:
        raise GuestError(problem)
    own_dir = out_dir is None
    out = out_dir or Path(tempfile.mkdtemp(prefix="cme-guest-"))
    try:
        for name, size in (("scratch.img", options.scratch_mb), ("nvme.img", options.nvme_mb)):
            with (out / name).open("wb") as fh:
                fh.truncate(size * 1024 * 1024)
        (out / "request.json").write_text(json.dumps({"argv": list(argv), "env": dict(options.env)}))
        started = time.monotonic()
        status, console, timed_out = run_with_timeout(qemu_command(image, out, options), options.timeout, echo)
        seconds = time.monotonic() - started
        exit_file = out / "exit_code"
        exit_code = NO_EXIT_CODE
        if exit_file.is_file():
            with contextlib.suppress(ValueError):
                exit_code = int(exit_file.read_text().strip())
        if status not in (0, None) and not exit_file.is_file():
            raise GuestError(f"QEMU exited with status {status} before the guest ran the command:\n"
                             + "\n".join(console.strip().splitlines()[-20:]))
        return GuestResult(exit_code, console, seconds, timed_out, out)
    finally:
        if own_dir:
            for name in ("scratch.img", "nvme.img"):
                (out / name).unlink(missing_ok=True)
