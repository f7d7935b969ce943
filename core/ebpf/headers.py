"""Kernel headers for bcc: the running kernel's when present, else the nearest distribution tree.

bcc looks in ``$BCC_KERNEL_SOURCE``, then ``/lib/modules/$(uname -r)/{source,build}``,
then the in-kernel ``kheaders`` archive. Cloud images often have none of
these for the exact running kernel. Debian splits a header package into an
arch tree (generated files, ``.config``) and a ``-common`` tree that its
Makefile includes; bcc needs both visible as one tree. We build that merged
view out of symlinks in the exporter's own state directory rather than
writing into /lib/modules or /usr/src.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.files import read_text
from crusoe_metrics_exporter.statedir import UntrustedPath, check_system_dir, check_tree, private_dir

log = logging.getLogger(__name__)

MODULES_ROOT = Path("/lib/modules")
DISTRO_HEADERS_ROOT = Path("/usr/src")
KHEADERS_ARCHIVE = Path("/sys/kernel/kheaders.tar.xz")
_MARKER = ".crusoe-sources"
#: Plugins start in parallel; two threads must not build the same tree in one scratch directory.
_BUILD_LOCK = threading.Lock()
_INCLUDE_LINE = re.compile(r"^\s*include\s+(\S+)/Makefile\s*$", re.MULTILINE)
_ARCH_DIRS = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class HeaderChoice:
    """Which headers bcc will compile against."""

    #: Value for BCC_KERNEL_SOURCE; None lets bcc find the running kernel's own.
    source: Path | None
    description: str
    exact: bool

    def environment(self) -> dict[str, str]:
        return {"BCC_KERNEL_SOURCE": str(self.source)} if self.source is not None else {}


class HeadersUnavailable(Exception):
    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        #: What the operator can do, when it is not "install headers".
        self.fix = fix


def _version_key(text: str) -> tuple[int, ...]:
    """Numbers of a release such as ``6.1.0-56-cloud-amd64``: the version and the package's ABI number."""
    head, _, rest = text.partition("-")
    abi = rest.split("-", 1)[0] if rest else ""
    return tuple(int(n) for n in re.findall(r"\d+", f"{head}.{abi}"))


def _has_kconfig(tree: Path) -> bool:
    return (tree / "include" / "linux" / "kconfig.h").exists()


def _tree_parts(tree: Path) -> list[Path]:
    """The directories (base first) that together make up one header tree."""
    parts = [tree]
    try:
        makefile = read_text(tree / "Makefile")
    except OSError:
        return parts
    match = _INCLUDE_LINE.search(makefile)
    if match:
        base = Path(match.group(1))
        if not base.is_absolute():
            base = (tree / base).resolve()
        if base.is_dir() and base != tree:
            parts.insert(0, base)
    return parts


def _candidate_trees(root: Path, arch_dir: str) -> list[Path]:
    """Arch-specific header trees (those with generated headers for our architecture)."""
    out: list[Path] = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return out
    for tree in entries:
        if not tree.name.startswith("linux-headers-") or not tree.is_dir():
            continue
        if (tree / "include" / "generated").is_dir() and (tree / "arch" / arch_dir).is_dir():
            out.append(tree)
    return out


def _distance(release: str, tree: Path) -> tuple[int, ...]:
    want = _version_key(release)
    have = _version_key(tree.name.removeprefix("linux-headers-"))
    width = max(len(want), len(have))
    want += (0,) * (width - len(want))
    have += (0,) * (width - len(have))
    # Most significant differing component first: 6.1 is nearer to 6.18 than 5.19 is.
    return tuple(abs(a - b) for a, b in zip(want, have, strict=True))


def _merge(dst: Path, sources: list[Path]) -> None:
    """Symlink tree in ``dst`` with later sources overriding earlier ones.

    Where only one source has an entry (or an entry is a file), one symlink
    covers it, so the tree costs hundreds of links, not tens of thousands.
    """
    # 0755 whatever the umask: a group-writable tree would be refused when it is reused.
    dst.mkdir(mode=0o755, exist_ok=True)
    names: dict[str, list[Path]] = {}
    for src in sources:
        try:
            for entry in src.iterdir():
                names.setdefault(entry.name, []).append(entry)
        except OSError:
            continue
    for name, paths in names.items():
        target = dst / name
        dirs = [p for p in paths if p.is_dir()]
        if len(paths) > 1 and len(dirs) == len(paths):
            _merge(target, dirs)
        else:
            target.symlink_to(paths[-1])


def _merged_tree(state_dir: Path, tree: Path, parts: list[Path]) -> Path:
    with _BUILD_LOCK:
        return _build_merged_tree(state_dir, tree, parts)


def _build_merged_tree(state_dir: Path, tree: Path, parts: list[Path]) -> Path:
    # Root compiles against what is here: a tree someone else could have
    # written is refused (UntrustedPath), never used and never repaired.
    headers_dir = private_dir(private_dir(state_dir) / "kernel-headers", "kernel header dir")
    out = headers_dir / tree.name
    wanted = "\n".join(str(p) for p in parts)
    if os.path.lexists(out):
        check_tree(out, "kernel header tree")
        try:
            if read_text(out / _MARKER) == wanted and _has_kconfig(out):
                return out
        except OSError:
            pass
    # A fresh directory per build: not named by pid, which every start thread
    # of this process (and a reused pid in a container) would share.
    scratch = Path(tempfile.mkdtemp(prefix=f".{tree.name}.building.", dir=headers_dir))
    try:
        scratch.chmod(0o755)
        _merge(scratch, parts)
        fd = os.open(scratch / _MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as marker:
            marker.write(wanted)
        for _ in range(5):
            try:
                scratch.rename(out)  # atomic; fails while another tree is in place
                return out
            except OSError:
                pass
            try:
                # Another builder on this state dir (another exporter) finished the same tree first.
                if read_text(out / _MARKER) == wanted and _has_kconfig(out):
                    return out
            except OSError:
                pass
            # A stale tree: moved aside in one step, so no builder ever sees it half removed.
            trash = Path(tempfile.mkdtemp(prefix=f".{tree.name}.stale.", dir=out.parent))
            with contextlib.suppress(OSError):
                out.rename(trash / "tree")
            shutil.rmtree(trash, ignore_errors=True)
        raise OSError(f"{out} keeps being replaced by another builder")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_headers(state_dir: Path, release: str | None = None) -> HeaderChoice:
    """Pick the headers bcc will use; raises HeadersUnavailable with the reason."""
    release = release or os.uname().release
    override = os.environ.get("BCC_KERNEL_SOURCE")
    if override:
        return HeaderChoice(Path(override), f"headers from BCC_KERNEL_SOURCE={override}", exact=False)
    for sub in ("build", "source"):
        tree = MODULES_ROOT / release / sub
        if _has_kconfig(tree):
            return HeaderChoice(None, f"running kernel's headers at {tree}", exact=True)
    if KHEADERS_ARCHIVE.exists():
        return HeaderChoice(None, f"running kernel's built-in headers ({KHEADERS_ARCHIVE})", exact=True)
    arch_dir = _ARCH_DIRS.get(platform.machine(), platform.machine())
    trees = _candidate_trees(DISTRO_HEADERS_ROOT, arch_dir)
    if not trees:
        raise HeadersUnavailable(
            f"no kernel headers: /lib/modules/{release}/build is missing and no linux-headers-* tree for "
            f"{arch_dir} is under {DISTRO_HEADERS_ROOT} (install linux-headers-{release} or your distribution's "
            "closest linux-headers package)"
        )
    tree = min(trees, key=lambda t: _distance(release, t))
    parts = _tree_parts(tree)
    try:
        for part in parts:
            check_system_dir(part, "kernel headers")
    except UntrustedPath as exc:
        raise HeadersUnavailable(str(exc), exc.fix) from None
    if len(parts) == 1 and _has_kconfig(tree):
        return HeaderChoice(tree, f"distribution headers {tree} (running kernel {release})", exact=False)
    try:
        merged = _merged_tree(state_dir, tree, parts)
    except UntrustedPath as exc:
        raise HeadersUnavailable(str(exc), exc.fix) from None
    except OSError as exc:
        raise HeadersUnavailable(f"cannot prepare kernel headers from {tree} in {state_dir}: {exc}") from None
    if not _has_kconfig(merged):
        raise HeadersUnavailable(f"kernel headers {tree} (with {', '.join(map(str, parts[:-1]))}) lack kconfig.h")
    names = " + ".join(p.name for p in parts)
    return HeaderChoice(
        merged, f"nearest distribution headers {names} merged at {merged} (running kernel {release})", exact=False
    )
