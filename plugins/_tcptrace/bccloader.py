"""Load a TCP-tracing program with bcc and expose its maps as raw bytes.

Stop-gap until the shared eBPF runtime (crusoe_metrics_exporter.ebpf) can
serve these programs; the interface (``map_items``/``map_update``/...)
mirrors what the plugins need from it, so swapping is local to this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from crusoe_metrics_exporter.plugins._tcptrace.program import HOOKS

_DIST_BCC = Path("/usr/lib/python3/dist-packages/bcc")
_HEADER_TREES = Path("/usr/src")
_MERGED = Path("/run/crusoe-metrics-exporter/kernel-headers")
_lock = threading.Lock()


class BpfLoadError(Exception):
    """The program cannot be compiled, loaded or attached; str() is one line."""


def import_bcc() -> ModuleType:
    """bcc's Python bindings, also from a virtualenv without system site-packages."""
    try:
        return importlib.import_module("bcc")
    except ImportError:
        pass
    init = _DIST_BCC / "__init__.py"
    if not init.is_file():
        raise BpfLoadError("bcc's Python bindings are not installed (Debian: python3-bpfcc)")
    spec = importlib.util.spec_from_file_location("bcc", init, submodule_search_locations=[str(_DIST_BCC)])
    if spec is None or spec.loader is None:
        raise BpfLoadError(f"cannot import bcc from {_DIST_BCC}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "no bcc"
        sys.modules.pop("bcc", None)
        raise BpfLoadError(f"importing bcc failed: {exc}") from None
    return module


def _kernel_source() -> str | None:
    """A header tree bcc can compile against when the running kernel's is missing."""
    release = os.uname().release
    if (Path("/lib/modules") / release / "build" / "include").is_dir():
        return None
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return os.environ["BCC_KERNEL_SOURCE"]
    commons = sorted(_HEADER_TREES.glob("linux-headers-*-common"))
    if not commons:
        return None
    common = commons[-1]
    flavour = next(
        (p for p in sorted(_HEADER_TREES.glob(common.name.removesuffix("-common") + "-*")) if p != common), None
    )
    target = _MERGED / common.name
    if not (target / ".complete").exists():
        for tree in (common, flavour):
            if tree is None:
                continue
            for src in tree.rglob("*"):
                dst = target / src.relative_to(tree)
                if src.is_dir() and not src.is_symlink():
                    dst.mkdir(parents=True, exist_ok=True)
                else:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if dst.is_symlink() or dst.exists():
                        dst.unlink()
                    dst.symlink_to(src.resolve() if src.is_symlink() else src)
        (target / ".complete").touch()
    return str(target)


@dataclass(frozen=True)
class ProgramState:
    role: str
    method: str
    target: str
    attached: bool
    error: str = ""


class LoadedTcpProgram:
    """A compiled, loaded and attached program; maps read and written as bytes."""

    def __init__(self, bpf: Any, statuses: list[ProgramState]) -> None:
        self._bpf = bpf
        self.statuses = statuses
        self._closed = False
        self._tables: dict[str, Any] = {}

    def _table(self, name: str) -> Any:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self._bpf.get_table(name.encode())
        return table

    def map_items(self, name: str) -> list[tuple[bytes, bytes]]:
        table = self._table(name)
        return [(bytes(k), bytes(v)) for k, v in table.items()]

    def map_lookup(self, name: str, key: bytes) -> bytes | None:
        table = self._table(name)
        try:
            return bytes(table[table.Key.from_buffer_copy(key)])
        except KeyError:
            return None

    def map_update(self, name: str, key: bytes, value: bytes) -> None:
        table = self._table(name)
        table[table.Key.from_buffer_copy(key)] = table.Leaf.from_buffer_copy(value)

    def map_delete(self, name: str, key: bytes) -> None:
        table = self._table(name)
        with contextlib.suppress(KeyError):
            del table[table.Key.from_buffer_copy(key)]

    def map_sizes(self, name: str) -> tuple[int, int, int]:
        """(key size, value size, max entries)."""
        table = self._table(name)
        return ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf), int(table.max_entries)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bpf.cleanup()


def load(source: str, cflags: Sequence[str], tracepoint_roles: Sequence[str], kprobe_roles: Sequence[str],
         attach: bool = True) -> LoadedTcpProgram:
    """Compile and load; tracepoint roles attach on load, kprobe roles when ``attach``.

    With ``attach=False`` the kprobe programs are only loaded (verifier check).
    """
    bcc = import_bcc()
    with _lock:
        headers = _kernel_source()
        if headers is not None:
            os.environ["BCC_KERNEL_SOURCE"] = headers
        try:
            bpf = bcc.BPF(text=source.encode(), cflags=list(cflags))
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception on compile/load failure
            raise BpfLoadError(f"compiling or loading the eBPF program failed: {exc}") from None
    statuses: list[ProgramState] = []
    by_role = {h.role: h for h in HOOKS}
    for role in tracepoint_roles:
        hook = by_role[role]
        statuses.append(ProgramState(role, "tracepoint", ":".join(hook.tracepoint), True))
    try:
        for role in kprobe_roles:
            for variant in by_role[role].kprobes:
                kind = bcc.BPF.KPROBE
                fn = bpf.load_func(variant.fn.encode(), kind)
                target = f"{'kretprobe' if variant.ret else 'kprobe'}:{variant.function}"
                if not attach:
                    statuses.append(ProgramState(role, "kprobe", target, False))
                    continue
                try:
                    if variant.ret:
                        bpf.attach_kretprobe(event=variant.function.encode(), fn_name=fn.name)
                    else:
                        bpf.attach_kprobe(event=variant.function.encode(), fn_name=fn.name)
                except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
                    raise BpfLoadError(f"attaching {target} failed: {exc}") from None
                statuses.append(ProgramState(role, "kprobe", target, True))
    except BpfLoadError:
        bpf.cleanup()
        raise
    except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception (verifier)
        bpf.cleanup()
        raise BpfLoadError(f"loading the kprobe fallback failed: {exc}") from None
    return LoadedTcpProgram(bpf, statuses)
