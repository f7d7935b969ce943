"""Find the distribution's bcc Python package and import just that package.

bcc's Python bindings are not on PyPI (the PyPI project called ``bcc`` is an
unrelated lattice library); distributions ship them as ``python3-bpfcc`` in
the system dist-packages. The exporter runs in its own virtualenv, so we load
the one ``bcc`` package from there by path instead of putting all of
dist-packages on ``sys.path`` (which would shadow the venv's own packages).
Only the short-lived loader helper calls :func:`import_bcc`.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

BCC_PATH_ENV = "CRUSOE_EXPORTER_BCC_PATH"
_SEARCH_GLOBS = (
    "/usr/lib/python3/dist-packages/bcc",
    "/usr/lib/python3*/site-packages/bcc",
    "/usr/lib64/python3*/site-packages/bcc",
    "/usr/local/lib/python3*/dist-packages/bcc",
    "/usr/local/lib/python3*/site-packages/bcc",
    "/usr/share/bcc/python/bcc",
)
INSTALL_HINT = "install the distribution's bcc Python bindings (Debian/Ubuntu: apt-get install python3-bpfcc)"


class BccMissing(Exception):
    pass


def candidate_dirs() -> list[Path]:
    found: list[Path] = []
    override = os.environ.get(BCC_PATH_ENV)
    if override:
        found.append(Path(override))
    for pattern in _SEARCH_GLOBS:
        found.extend(Path(p) for p in sorted(glob.glob(pattern)))
    return [p for p in found if (p / "__init__.py").is_file()]


def locate() -> Path:
    """The bcc package directory to use; raises BccMissing with a fix."""
    dirs = candidate_dirs()
    if not dirs:
        raise BccMissing(f"bcc Python bindings not found (looked in {', '.join(_SEARCH_GLOBS)}); {INSTALL_HINT}")
    return dirs[0]


def libbcc_present() -> str | None:
    """The shared library bcc's bindings load, if the loader can find it."""
    return ctypes.util.find_library("bcc") or (
        "libbcc.so.0" if glob.glob("/usr/lib/*/libbcc.so.0") or glob.glob("/usr/lib*/libbcc.so.0") else None
    )


def import_bcc() -> ModuleType:
    """Import the system's bcc package into this process (the loader helper only)."""
    existing = sys.modules.get("bcc")
    if existing is not None and hasattr(existing, "BPF"):
        return existing
    path = locate()
    spec = importlib.util.spec_from_file_location("bcc", path / "__init__.py", submodule_search_locations=[str(path)])
    if spec is None or spec.loader is None:
        raise BccMissing(f"cannot import bcc from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure here is "bcc unusable", told to the user
        sys.modules.pop("bcc", None)
        raise BccMissing(f"bcc at {path} failed to import ({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
    if not hasattr(module, "BPF"):
        sys.modules.pop("bcc", None)
        raise BccMissing(f"{path} is not the iovisor bcc package (no BPF class); {INSTALL_HINT}")
    return module
