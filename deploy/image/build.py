#!/usr/bin/env python3
"""Build the exporter's container image with podman, from a locally built Debian 12 base.

    python3 deploy/image/build.py [--tag TAG] [--base IMAGE]

No container registry is needed: the base is a Debian 12 ``minbase`` root
file system made by mmdebstrap from the Debian mirror apt on this machine
is configured with, imported into podman's local storage. It is cached
outside the work tree (``$CRUSOE_IMAGE_CACHE``, default
``~/.cache/crusoe-metrics-exporter``) under a hash of its recipe, so it is
built once per recipe; concurrent builders wait on a file lock instead of
building it twice. ``--base`` skips all that and builds on an image you
have (``docker.io/library/debian:12-slim`` where a registry is reachable).

The project itself goes in as wheels built here (``build/image/wheels``), so
the image build needs no access to PyPI; ``deploy/Dockerfile`` installs
Debian's ``python3-bpfcc`` from the same mirror. Prints the image tag.

podman runs with a private containers.conf (see :func:`containers_conf`):
``runc`` as the runtime and lowered ulimits, which is what works on hosts
whose bounding set lacks CAP_SYS_RESOURCE (crun then fails on setrlimit).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_NAME = "localhost/crusoe-metrics-exporter"
BASE_NAME = "localhost/crusoe-debian-base"
SUITE = "bookworm"
WHEELS = REPO / "build" / "image" / "wheels"
#: What Debian's slim images leave out; also applies to packages the Dockerfile installs later.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
#: Bump when the recipe changes in a way its inputs below do not show.
RECIPE_VERSION = 2


def version() -> str:
    text = (REPO / "core" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not match:
        raise SystemExit("build.py: no __version__ in core/__init__.py")
    return match.group(1)


def cache_dir() -> Path:
    root = os.environ.get("CRUSOE_IMAGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "crusoe-metrics-exporter")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def containers_conf() -> Path:
    """A containers.conf for podman/buildah: runc and ulimits a bounding set without CAP_SYS_RESOURCE allows."""
    conf = cache_dir() / "containers.conf"
    text = (
        "# Written by deploy/image/build.py.\n"
        "[containers]\n"
        'default_ulimits = ["nofile=8192:8192", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    if not conf.exists() or conf.read_text() != text:
        tmp = conf.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        tmp.rename(conf)
    return conf


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def podman(*args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=podman_env(), text=True, check=check,
                          capture_output=capture)


def debian_sources() -> str:
    """The Debian archive entries of apt's own sources (deb822), for the base's sources.list.

    Only stanzas that name this suite and are signed by Debian's archive
    keyring are kept: third-party repositories configured on the build host
    have no business in the image.
    """
    stanzas: list[str] = []
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in files:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (line.partition(":") for line in stanza.splitlines() if line and line[0] != "#")
                if _
            )
            suites = fields.get("Suites", "").split()
            if fields.get("Types", "deb").split()[0] != "deb" or not any(s.startswith(SUITE) for s in suites):
                continue
            if "debian-archive-keyring" not in fields.get("Signed-By", "debian-archive-keyring"):
                continue
            keep = {k: v for k, v in fields.items() if k in ("Types", "URIs", "Suites", "Components", "Signed-By")}
            keep["Types"] = "deb"
            stanzas.append("\n".join(f"{k}: {v}" for k, v in keep.items()))
    if stanzas:
        return "\n\n".join(stanzas) + "\n"
    # One-line sources.list style.
    lines = []
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and any(p.startswith(SUITE) for p in parts):
            lines.append(line.strip())
    if not lines:
        raise SystemExit(f"build.py: apt on this machine has no Debian {SUITE} source to build the base from")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created): concurrent builders of one base wait for each other."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def base_image() -> str:
    """The local Debian 12 base image, built from the cached root file system (made once per recipe)."""
    sources = debian_sources()
    recipe = {"suite": SUITE, "variant": "minbase", "sources": sources, "dpkg": DPKG_EXCLUDES,
              "version": RECIPE_VERSION, "arch": os.uname().machine}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    tag = f"{BASE_NAME}:{digest}"
    cache = cache_dir() / "rootfs"
    cache.mkdir(exist_ok=True)
    tarball = cache / f"{SUITE}-minbase-{digest}.tar"
    with locked(cache / f"{digest}.lock"):
        if podman("image", "exists", tag, check=False).returncode == 0:
            return tag
        if not tarball.exists():
            print(f"build.py: building the Debian {SUITE} base root file system (once per recipe) ...",
                  file=sys.stderr)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                # mmdebstrap reads a deb822 file only under a .sources name.
                sources_file = Path(tmp) / "debian.sources"
                sources_file.write_text(sources)
                partial = Path(tmp) / "rootfs.tar"
                subprocess.run(
                    ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar",
                     # merged /usr without the usrmerge package (which pulls in perl).
                     "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                     *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
                     "--aptopt=Acquire::Languages \"none\"",
                     # Leave no apt lists or caches behind: the image installs with a fresh update.
                     "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
                     SUITE, str(partial), str(sources_file)],
                    check=True,
                )
                partial.rename(tarball)
        podman("import", "--change", "CMD [\"/bin/bash\"]", str(tarball), tag, capture=True)
    return tag


def build_wheels() -> None:
    """The project's wheel and its dependencies' wheels, built here (the image build needs no PyPI)."""
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELS), str(REPO)],
                   check=True)


def build(tag: str, base: str) -> str:
    build_wheels()
    podman(
        "build", "--quiet", "--format", "docker", "--network", "host",
        "--file", str(REPO / "deploy" / "Dockerfile"),
        "--build-arg", f"BASE={base}", "--build-arg", f"VERSION={version()}",
        "--tag", tag, str(REPO),
        capture=True,
    )
    return tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=f"{IMAGE_NAME}:{version()}", help="image tag (default: %(default)s)")
    parser.add_argument("--base", help="build on this image instead of the locally built Debian base")
    parser.add_argument("--print-containers-conf", action="store_true",
                        help="print the path of the containers.conf podman is run with, and exit")
    args = parser.parse_args()
    if args.print_containers_conf:
        print(containers_conf())
        return
    for tool in ("podman",) + (() if args.base else ("mmdebstrap",)):
        if shutil.which(tool) is None:
            raise SystemExit(f"build.py: {tool} is not installed (scripts/setup-system.sh --test installs it)")
    try:
        print(build(args.tag, args.base or base_image()))
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()
        raise SystemExit(f"build.py: {' '.join(exc.cmd[:3])} failed: {detail[-1] if detail else exc}") from None


if __name__ == "__main__":
    main()
