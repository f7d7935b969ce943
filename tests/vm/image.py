"""The guest image: its recipe, the cache it lives in, and how it is built.

The recipe is everything that decides what is in the image: the Debian
packages, the module trees left out, the in-image init, the Python
requirements. Its hash names the cache entry, so a changed recipe builds a
new image and an unchanged one is reused by every clone on the machine. A
build runs under a file lock (two clones asking at once build it once) in a
scratch directory renamed into place only when complete, so a half-built
image is never used.

Downloads come only from the configured mirrors: mmdebstrap gets the host's
own Debian apt sources, pip the host's own PyPI configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "CME_VM_CACHE"
SUITE = "bookworm"
#: The guest's Python is Debian 12's 3.11; wheels are fetched for it, not for the host's interpreter.
GUEST_PYTHON = "3.11"
VENV = "/opt/cme/venv"

#: What the guest suite and the issues after it need inside the guest, so the
#: recipe does not churn: the stock kernel (not -cloud-amd64: it lacks 9p) with
#: matching headers for bcc, NFS server and client, netem, fio, nvme-cli.
PACKAGES = (
    "linux-image-amd64",
    "linux-headers-amd64",
    "initramfs-tools",
    "python3",
    "python3-venv",
    "python3-bpfcc",
    "nfs-kernel-server",
    "nfs-common",
    "rpcbind",
    "iproute2",
    "fio",
    "nvme-cli",
    "kmod",
    "procps",
    "util-linux",
    "mount",
    "e2fsprogs",
    # Independent references for the tests: bpftool lists what is attached,
    # tcpdump counts what crosses loopback, ping is the ICMP peer.
    "bpftool",
    "tcpdump",
    "iputils-ping",
)

#: Module trees no test guest needs (drivers for hardware QEMU does not give
#: it, file systems it never mounts): about half the kernel's module tree.
MODULE_EXCLUDES = (
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/infiniband",
    "drivers/usb",
    "drivers/staging",
    "drivers/iio",
    "drivers/hid",
    "drivers/isdn",
    "drivers/mtd",
    "drivers/bluetooth",
    "drivers/scsi",
    "drivers/target",
    "drivers/mmc",
    "drivers/hwmon",
    "drivers/input",
    "drivers/thunderbolt",
    "drivers/nfc",
    "drivers/platform",
    "sound",
    "net/bluetooth",
    "net/wireless",
    "net/mac80211",
    "fs/btrfs",
    "fs/xfs",
    "fs/ocfs2",
    "fs/gfs2",
    "fs/ceph",
    "fs/smb",
    "fs/f2fs",
    "fs/ntfs3",
    "fs/jfs",
    "fs/reiserfs",
    "fs/ubifs",
    "fs/nilfs2",
)
DOC_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")

#: Built into the initramfs (MODULES=list): just enough to find the root disk.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")

#: Python packages the guest tests need beyond the project's own dependencies
#: (read from pyproject.toml): pytest, and what the conftests and shared test
#: helpers import at collection (cryptography: tests/helpers/tls_certs.py).
#: A guest test importing another test dependency must add it here.
GUEST_TEST_REQUIREMENTS = ("pytest>=8", "cryptography>=42")

#: PID 1 of the guest. Kept minimal because changing it rebuilds the image:
#: everything else the guest does at boot is in tests/vm/guest_boot.py, read
#: from the shared checkout.
INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of the crusoe-metrics-exporter test guest (written by tests/vm/image.py).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mnt() { mountpoint -q "$3" 2>/dev/null || { mkdir -p "$3"; mount -t "$1" -o "$4" "$2" "$3"; }; }
mnt proc proc /proc defaults
mnt sysfs sysfs /sys defaults
mnt devtmpfs devtmpfs /dev defaults
mnt devpts devpts /dev/pts defaults
mnt tmpfs tmpfs /dev/shm defaults
mnt tmpfs tmpfs /run mode=0755
mnt tmpfs tmpfs /tmp defaults
mnt tracefs tracefs /sys/kernel/tracing defaults
mnt debugfs debugfs /sys/kernel/debug defaults
mnt bpf bpf /sys/fs/bpf defaults
mnt cgroup2 cgroup2 /sys/fs/cgroup defaults
hostname cme-guest
ip link set lo up
modprobe 9pnet_virtio && modprobe 9p
opts=trans=virtio,version=9p2000.L,msize=512000
mnt 9p cmesrc /mnt/src "$opts,ro" && mnt 9p cmeout /mnt/out "$opts"
if [ -f /mnt/src/tests/vm/guest_boot.py ] && [ -d /mnt/out ]; then
    /opt/cme/venv/bin/python /mnt/src/tests/vm/guest_boot.py /mnt/src /mnt/out
    echo "cme-init: guest_boot exited with $?" > /dev/console
else
    echo "cme-init: the shares did not mount" > /dev/console
fi
sync
umount /mnt/out 2>/dev/null
mount -o remount,ro / 2>/dev/null
# Power off and spin in the shell (no exec of a binary from a disk going away).
echo o > /proc/sysrq-trigger
while :; do :; done
"""


class ImageError(Exception):
    """The guest image cannot be built or found; ``str()`` says why in one line."""


@dataclass(frozen=True)
class Image:
    """A complete, cached guest image."""

    root: Path

    @property
    def kernel(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.root / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs.img"

    @property
    def info(self) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.root / "image.json").read_text())
        return data


def project_requirements() -> tuple[str, ...]:
    """The project's runtime dependencies (pyproject) plus what the guest tests need."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return (*project.get("dependencies", ()), *GUEST_TEST_REQUIREMENTS)


def recipe() -> dict[str, object]:
    """Everything that decides the image's content, as data (hashed for the cache key).

    The build procedure is this module's own text, so any change to it builds anew.
    """
    return {
        "builder": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "suite": SUITE,
        "packages": PACKAGES,
        "module_excludes": MODULE_EXCLUDES,
        "doc_excludes": DOC_EXCLUDES,
        "initramfs_modules": INITRAMFS_MODULES,
        "init": INIT_SCRIPT,
        "python": GUEST_PYTHON,
        "requirements": project_requirements(),
    }


def recipe_hash() -> str:
    text = json.dumps(recipe(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_root() -> Path:
    """Where images live: $CME_VM_CACHE, else $XDG_CACHE_HOME or ~/.cache, under crusoe-metrics-exporter/vm."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crusoe-metrics-exporter" / "vm"


def cached_image() -> Image | None:
    """The image for the current recipe if it is already built."""
    root = cache_root() / recipe_hash()
    return Image(root) if (root / "image.json").is_file() else None


def missing_tools() -> list[str]:
    return [tool for tool in ("mmdebstrap", "mkfs.ext4") if shutil.which(tool) is None]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_image(log: Path | None = None) -> Image:
    """The image for the current recipe, building it first when it is not cached (raises ImageError)."""
    image = cached_image()
    if image is not None:
        return image
    root = cache_root()
    digest = recipe_hash()
    with _locked(root / f"{digest}.lock"):
        # Another clone may have finished the build while we waited for the lock.
        image = cached_image()
        if image is not None:
            return image
        problems = missing_tools()
        if problems:
            raise ImageError(f"cannot build the guest image: {', '.join(problems)} not installed "
                             "(scripts/setup-system.sh --test installs them)")
        started = time.monotonic()
        if log is not None:
            log.write_text("")
        scratch = Path(tempfile.mkdtemp(prefix=f"{digest}.building-", dir=root))
        try:
            _build(scratch, log)
            (scratch / "image.json").write_text(json.dumps({
                "recipe_hash": digest,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": f"{time.monotonic() - started:.0f}",
                "kernel_release": (scratch / "kernel_release").read_text().strip(),
            }, indent=2))
            os.rename(scratch, root / digest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _prune(root, keep=digest)
    return Image(root / digest)


def _prune(root: Path, keep: str, retain: int = 3) -> None:
    """Drop all but the ``retain`` most recent images (other clones may be on other recipes)."""
    images = sorted((p for p in root.iterdir() if p.is_dir() and (p / "image.json").is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in images[retain:]:
        if old.name == keep:
            continue
        with contextlib.suppress(BlockingIOError, OSError), (root / f"{old.name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(old, ignore_errors=True)
            (root / f"{old.name}.lock").unlink(missing_ok=True)


def _run(cmd: list[str], log: Path | None, what: str, timeout: float) -> None:
    sink = log.open("a") if log is not None else None
    try:
        if sink is not None:
            sink.write(f"$ {' '.join(cmd)}\n")
            sink.flush()
        proc = subprocess.run(cmd, stdout=sink or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took longer than {timeout:.0f} s") from None
    finally:
        if sink is not None:
            sink.close()
    if proc.returncode != 0:
        tail = "" if log is not None else "\n".join((proc.stdout or "").strip().splitlines()[-15:])
        where = f" (log: {log})" if log is not None else f":\n{tail}"
        raise ImageError(f"{what} failed with exit status {proc.returncode}{where}")


def debian_sources() -> str | None:
    """The host's configured Debian apt sources (deb822 or one-line), for mmdebstrap; None means its default."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file():
        return str(deb822)
    one_line = Path("/etc/apt/sources.list")
    if one_line.is_file():
        lines = [ln for ln in one_line.read_text().splitlines()
                 if ln.startswith("deb ") and f" {SUITE}" in ln and "debian" in ln]
        if lines:
            return "\n".join(lines)
    return None


def _download_wheels(dest: Path, log: Path | None) -> None:
    """Wheels of every Python requirement, for the guest's interpreter, through the host's pip configuration."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest),
           "--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp",
           "--abi", "cp" + GUEST_PYTHON.replace(".", "")]
    for platform in ("manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"):
        cmd += ["--platform", platform]
    _run([*cmd, *project_requirements()], log, "downloading the guest's Python wheels", timeout=600)


def _build(scratch: Path, log: Path | None) -> None:
    rootdir = scratch / "root"
    wheels = scratch / "wheels"
    wheels.mkdir()
    _download_wheels(wheels, log)

    modules_list = "\n".join(INITRAMFS_MODULES) + "\n"
    setup = (
        'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d" && '
        'printf "MODULES=list\\nCOMPRESS=gzip\\n" > "$1/etc/initramfs-tools/conf.d/cme-guest" && '
        f'printf "{modules_list.replace(chr(10), chr(92) + "n")}" > "$1/usr/share/initramfs-tools/modules.d/cme-guest"'
    )
    requirements = " ".join(f"'{r}'" for r in project_requirements())
    customize = [
        # The in-image init and an empty exports table the tests fill.
        f'cat > "$1/sbin/cme-init" <<\'CME_INIT_EOF\'\n{INIT_SCRIPT}CME_INIT_EOF',
        'chmod 0755 "$1/sbin/cme-init"',
        'echo cme-guest > "$1/etc/hostname"',
        'printf "127.0.0.1 localhost\\n::1 localhost\\n127.0.1.1 cme-guest\\n" > "$1/etc/hosts"',
        ': > "$1/etc/exports"',
        # Python dependencies from the wheels fetched on the host: pip inside
        # the emulated guest would take minutes at every boot.
        f'mkdir -p "$1/tmp/wheels" && cp {wheels}/*.whl "$1/tmp/wheels/"',
        f'chroot "$1" python3 -m venv {VENV}',
        f'chroot "$1" env -i PATH=/usr/bin:/bin {VENV}/bin/python -m pip install --quiet --no-index '
        f'--find-links /tmp/wheels {requirements}',
        'rm -rf "$1/tmp/wheels"',
        'ls "$1"/lib/modules > "$1/../kernel_release"',
    ]
    cmd = [
        "mmdebstrap",
        f"--mode={'root' if os.geteuid() == 0 else 'unshare'}",
        "--variant=minbase",
        "--format=directory",
        "--include=" + ",".join(PACKAGES),
        "--aptopt=APT::Install-Recommends false",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DOC_EXCLUDES),
        *(f"--dpkgopt=path-exclude=/lib/modules/*/kernel/{tree}/*" for tree in MODULE_EXCLUDES),
        f"--setup-hook={setup}",
        *(f"--customize-hook={step}" for step in customize),
        SUITE,
        str(rootdir),
    ]
    sources = debian_sources()
    if sources is not None:
        cmd.append(sources)
    _run(cmd, log, "mmdebstrap (building the guest's Debian root)", timeout=1500)

    kernels = sorted((rootdir / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootdir / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise ImageError(f"the guest root has no kernel or initramfs in /boot ({rootdir})")
    shutil.copy2(kernels[-1], scratch / "vmlinuz")
    shutil.copy2(initrds[-1], scratch / "initrd.img")

    used = int(subprocess.run(["du", "-sxm", str(rootdir)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    # Room for what tests write (NFS exports, dd targets): they write to a
    # throw-away overlay, so the free space costs nothing on the host.
    size_mb = max(4096, used * 2 + 1024)
    rootfs = scratch / "rootfs.img"
    _run(["mkfs.ext4", "-q", "-F", "-L", "cme-root", "-E", "lazy_itable_init=1", "-d", str(rootdir), str(rootfs),
          f"{size_mb}M"], log, "mkfs.ext4 (guest root file system)", timeout=900)
    shutil.rmtree(rootdir)
    shutil.rmtree(wheels)
