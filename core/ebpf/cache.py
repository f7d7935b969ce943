"""Compiled eBPF objects kept in the state directory, so a restart loads them without clang.

What bcc produces for a plugin's object is fully determined by the C
source, the compiler flags (defines, the variants asked for), the kernel
constants taken from BTF, the kernel headers, bcc itself (with the LLVM it
embeds) and the running kernel. After a compile the loader helper stores, per
object, the instructions of every compiled function with the places where
they refer to a map, and each map's definition. On the next start it finds
the entry by a hash of all those inputs, creates the maps, writes their new
descriptors into the instructions and loads the programs with ``bpf(2)``:
no bcc import, no clang.

An entry is used only when

* the file is a regular file owned by the exporter's user and writable by
  nobody else, in a directory that is (the state-dir trust rules);
* the full key material stored in it equals what this start computes (the
  hash in the file name alone is not trusted), and the SHA-256 of its
  payload matches (a torn or edited file is refused);
* its payload is well formed: every map reference points at a 64-bit
  immediate load (``BPF_LD | BPF_IMM | BPF_DW``, source ``BPF_PSEUDO_MAP_FD``)
  inside the program and names a stored map.

Anything else is discarded (removed when it is ours) and the object is
compiled again; so is an entry whose program the kernel now refuses.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform
import stat
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.files import open_regular, read_text

#: Bumped whenever what is stored, or how it is loaded, changes.
FORMAT = 1
DIR_NAME = "ebpf-cache"
#: Entries kept per object name: a few variants (e.g. filter capacities) survive, old kernels' do not.
KEEP_PER_NAME = 4
#: Far above any real entry (a few KiB of instructions); bounds what is read.
MAX_ENTRY_BYTES = 8 << 20
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
MODULES_ROOT = Path("/lib/modules")
KHEADERS_ARCHIVE = Path("/sys/kernel/kheaders.tar.xz")
POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")

_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
_PSEUDO_MAP_FD = 1
#: Map types whose definition is complete without BTF (everything bcc's BPF_TABLE macros make for us).
CACHEABLE_MAP_TYPES = frozenset({
    1,   # hash
    2,   # array
    4,   # perf_event_array
    5,   # percpu_hash
    6,   # percpu_array
    7,   # stack_trace
    9,   # lru_hash
    10,  # lru_percpu_hash
    27,  # ringbuf
})  # fmt: skip


class CacheInvalid(Exception):
    """An entry that must not be used; ``str()`` says why."""


# ---------------------------------------------------------------------------
# The key


def _sha256_file(path: Path, limit: int = 64 << 20) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as fh:  # a FIFO or device in its place is an error, never a blocked open
        remaining = limit
        while remaining > 0:
            chunk = fh.read(min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def _file_identity(path: Path) -> str:
    """Content hash of a small file, or "missing"/the error."""
    try:
        return _sha256_file(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _read_small(path: Path) -> str:
    try:
        return read_text(path).strip()[:4096]
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def headers_identity(source: str | None, release: str) -> dict[str, str]:
    """What identifies the kernel headers bcc compiles against (``BCC_KERNEL_SOURCE`` or bcc's own search).

    The generated configuration and version headers change with every
    header package; hashing them (not the thousands of other files) is cheap.
    """
    if source:
        tree = Path(source)
    else:
        tree = next((MODULES_ROOT / release / sub for sub in ("build", "source")
                     if (MODULES_ROOT / release / sub / "include").is_dir()), Path())
        if tree == Path():
            return {"tree": "kheaders" if KHEADERS_ARCHIVE.exists() else "none"}
    out = {"tree": os.path.realpath(tree)}
    for rel in ("include/generated/autoconf.h", "include/generated/uapi/linux/version.h",
                "include/config/kernel.release", "Makefile"):
        out[rel] = _file_identity(tree / rel)
    return out


def bcc_identity(bcc_dir: Path | None) -> dict[str, str]:
    """bcc's Python package version and the libbcc (which embeds clang/LLVM) it loads, without importing it."""
    out: dict[str, str] = {"package": str(bcc_dir) if bcc_dir else "missing"}
    if bcc_dir is not None:
        out["version.py"] = _file_identity(bcc_dir / "version.py")
        out["libbcc.py"] = _file_identity(bcc_dir / "libbcc.py")
    for name in ("libbcc.so.0", "libbcc_bpf.so.0"):
        found = _find_library(name)
        if found is None:
            out[name] = "missing"
            continue
        try:
            st = os.stat(found)
            out[name] = f"{os.path.realpath(found)} size={st.st_size} mtime={st.st_mtime_ns}"
        except OSError as exc:
            out[name] = f"unreadable: {exc.strerror or exc}"
    return out


def _find_library(name: str) -> str | None:
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                      "/usr/local/lib"):
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            return candidate
    return None


def key_material(request: Mapping[str, Any], headers_source: str | None, bcc_dir: Path | None) -> dict[str, Any]:
    """Everything the compiled object depends on, as a JSON-able dict."""
    uname = os.uname()
    return {
        "format": FORMAT,
        "name": request.get("name", ""),
        "source_sha256": hashlib.sha256(str(request.get("source", "")).encode()).hexdigest(),
        "cflags": list(request.get("cflags", ())),
        "functions": list(request.get("functions", ())),
        "constants": list(request.get("constants", ())),
        "kernel": {"release": uname.release, "version": uname.version, "machine": platform.machine(),
                   # bcc sizes per-CPU structures (perf event arrays) by the CPUs the kernel may bring up.
                   "possible_cpus": _read_small(POSSIBLE_CPUS)},
        "btf": _file_identity(BTF_VMLINUX),
        "headers": headers_identity(headers_source, uname.release),
        "bcc": bcc_identity(bcc_dir),
    }


def key_of(material: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(material)).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------
# The entry


@dataclass(frozen=True)
class MapDef:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgDef:
    fn: str
    prog_type: int
    insns: bytes
    license: str
    kern_version: int = 0
    expected_attach_type: int = 0
    attach_btf_id: int = 0
    #: (instruction index, map name) for every 64-bit immediate that holds a map descriptor.
    map_refs: tuple[tuple[int, str], ...] = ()

    def relocated(self, map_fds: Mapping[str, int]) -> bytes:
        """The instructions with each map reference set to the descriptor of that map in this process."""
        out = bytearray(self.insns)
        for index, name in self.map_refs:
            struct.pack_into("<i", out, index * 8 + 4, map_fds[name])
        return bytes(out)


@dataclass(frozen=True)
class Entry:
    maps: tuple[MapDef, ...]
    programs: tuple[ProgDef, ...]
    #: Functions that were asked for and not compiled, with the reason (e.g. a BTF constant missing).
    not_compiled: Mapping[str, str] = field(default_factory=dict)
    #: Extra facts of the compile to replay (the constants found in BTF).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "maps": [vars(m) for m in self.maps],
            "programs": [
                {**{k: v for k, v in vars(p).items() if k not in ("insns", "map_refs")},
                 "insns": base64.b64encode(p.insns).decode(), "map_refs": [list(r) for r in p.map_refs]}
                for p in self.programs
            ],
            "not_compiled": dict(self.not_compiled),
            "extra": dict(self.extra),
        }


def map_references(insns: bytes, fd_to_map: Mapping[int, str]) -> tuple[tuple[int, str], ...]:
    """Where the instructions load a map descriptor, and which map; CacheInvalid when one is unknown.

    bcc writes the descriptors of the maps it created into the program as
    ``ld_imm64`` with source register ``BPF_PSEUDO_MAP_FD``. Any other
    pseudo source (map values, BTF ids, functions by descriptor) cannot be
    replayed from a file, so such a program is not cached.
    """
    if len(insns) % 8:
        raise CacheInvalid("instructions are not a whole number of 8-byte instructions")
    refs = []
    count = len(insns) // 8
    i = 0
    while i < count:
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
        if code == _LD_IMM64:
            src = regs >> 4
            if src == _PSEUDO_MAP_FD:
                if imm not in fd_to_map:
                    raise CacheInvalid(f"instruction {i} refers to descriptor {imm}, which is no map of the object")
                refs.append((i, fd_to_map[imm]))
            elif src != 0:
                raise CacheInvalid(f"instruction {i} is a 64-bit load of kind {src}, which cannot be cached")
            i += 2
            continue
        i += 1
    return tuple(refs)


def _int(value: Any, what: str, low: int = 0, high: int = 2**32 - 1) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CacheInvalid(f"{what} is not an integer in [{low}, {high}]")
    return value


def _str(value: Any, what: str, limit: int = 256) -> str:
    if type(value) is not str or len(value) > limit:
        raise CacheInvalid(f"{what} is not a string of at most {limit} characters")
    return value


def parse_payload(payload: Any) -> Entry:
    """The entry a payload describes; CacheInvalid when anything is off."""
    if not isinstance(payload, dict):
        raise CacheInvalid("payload is not an object")
    maps: list[MapDef] = []
    for raw in payload.get("maps", ()):
        if not isinstance(raw, dict):
            raise CacheInvalid("a map is not an object")
        m = MapDef(_str(raw.get("name"), "map name", 64), _int(raw.get("map_type"), "map type"),
                   _int(raw.get("key_size"), "key size"), _int(raw.get("value_size"), "value size"),
                   _int(raw.get("max_entries"), "max entries"), _int(raw.get("flags"), "map flags"))
        if m.map_type not in CACHEABLE_MAP_TYPES:
            raise CacheInvalid(f"map {m.name} has type {m.map_type}, which is not cached")
        maps.append(m)
    names = {m.name for m in maps}
    if len(names) != len(maps):
        raise CacheInvalid("two maps share a name")
    programs: list[ProgDef] = []
    for raw in payload.get("programs", ()):
        if not isinstance(raw, dict):
            raise CacheInvalid("a program is not an object")
        try:
            insns = base64.b64decode(_str(raw.get("insns"), "instructions", MAX_ENTRY_BYTES), validate=True)
        except ValueError:
            raise CacheInvalid("instructions are not base64") from None
        if not insns or len(insns) % 8:
            raise CacheInvalid("instructions are not a whole number of 8-byte instructions")
        refs = []
        for ref in raw.get("map_refs", ()):
            if not (isinstance(ref, list) and len(ref) == 2):
                raise CacheInvalid("a map reference is not [index, name]")
            index = _int(ref[0], "map reference index", 0, len(insns) // 8 - 2)
            name = _str(ref[1], "map reference name", 64)
            code, regs = insns[index * 8], insns[index * 8 + 1]
            if code != _LD_IMM64 or regs >> 4 != _PSEUDO_MAP_FD or name not in names:
                raise CacheInvalid(f"map reference at instruction {index} does not match the instructions")
            refs.append((index, name))
        programs.append(ProgDef(
            fn=_str(raw.get("fn"), "function name", 128), prog_type=_int(raw.get("prog_type"), "program type"),
            insns=insns, license=_str(raw.get("license"), "license", 128),
            kern_version=_int(raw.get("kern_version", 0), "kernel version"),
            expected_attach_type=_int(raw.get("expected_attach_type", 0), "expected attach type"),
            attach_btf_id=_int(raw.get("attach_btf_id", 0), "attach BTF id"), map_refs=tuple(refs),
        ))
    not_compiled = payload.get("not_compiled", {})
    if not isinstance(not_compiled, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in not_compiled.items()):
        raise CacheInvalid("not_compiled is not a map of names to reasons")
    extra = payload.get("extra", {})
    if not isinstance(extra, dict):
        raise CacheInvalid("extra is not an object")
    return Entry(tuple(maps), tuple(programs), not_compiled, extra)


# ---------------------------------------------------------------------------
# The store


class CompileCache:
    """Entries under ``<state dir>/ebpf-cache``, one JSON file per (object name, key)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: What was discarded and why, for the loader's reply (the helper's own log is not seen).
        self.events: list[str] = []

    def path_for(self, name: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]
        return self.directory / f"{safe}-{key[:40]}.json"

    def load(self, name: str, material: Mapping[str, Any]) -> Entry | None:
        """The entry for ``material``, or None (a miss, or an entry discarded with a warning)."""
        key = key_of(material)
        path = self.path_for(name, key)
        try:
            raw = self._read_trusted(path)
        except FileNotFoundError:
            return None
        except (OSError, CacheInvalid) as exc:
            self.discard(path, str(exc))
            return None
        try:
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise CacheInvalid("not a JSON object")
            if document.get("format") != FORMAT:
                raise CacheInvalid(f"format {document.get('format')!r}, not {FORMAT}")
            if document.get("key") != key or document.get("material") != json.loads(_canonical(material)):
                raise CacheInvalid("it was compiled for other inputs (its key does not match)")
            payload = document.get("payload")
            if document.get("checksum") != hashlib.sha256(_canonical(payload)).hexdigest():
                raise CacheInvalid("its checksum does not match its content")
            return parse_payload(payload)
        except (ValueError, RecursionError, CacheInvalid) as exc:
            # RecursionError: JSON nested deeper than the parser recurses (only a damaged or forged file).
            self.discard(path, str(exc) or type(exc).__name__)
            return None

    def store(self, name: str, material: Mapping[str, Any], entry: Entry) -> Path | None:
        """Write ``entry`` atomically (mode 0600); None when the directory cannot be used."""
        try:
            self._ensure_directory()
        except (OSError, CacheInvalid) as exc:
            self.events.append(f"not stored: {self.directory}: {exc}")
            return None
        key = key_of(material)
        payload = entry.payload()
        document = {"format": FORMAT, "key": key, "material": material, "payload": payload,
                    "checksum": hashlib.sha256(_canonical(payload)).hexdigest()}
        path = self.path_for(name, key)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_canonical(document))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.events.append(f"not stored: cannot write {path}: {exc.strerror or exc}")
            return None
        self._prune(path)
        return path

    def discard(self, path: Path, why: str) -> None:
        self.events.append(f"discarded {path.name}: {why}")
        try:
            st = os.lstat(path)
            if st.st_uid == os.geteuid() and _trusted_dir(self.directory):
                os.unlink(path)
        except OSError:
            pass

    def _read_trusted(self, path: Path) -> bytes:
        if not os.path.lexists(self.directory):
            raise FileNotFoundError(self.directory)
        if not _trusted_dir(self.directory):
            raise CacheInvalid(f"{self.directory} is not a directory only the exporter's user can write")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CacheInvalid("not a regular file")
            if st.st_uid != os.geteuid():
                raise CacheInvalid(f"owned by uid {st.st_uid}, not by the exporter's uid {os.geteuid()}")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise CacheInvalid(f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
            data = fh.read(MAX_ENTRY_BYTES + 1)
        if len(data) > MAX_ENTRY_BYTES:
            raise CacheInvalid(f"larger than {MAX_ENTRY_BYTES} bytes")
        return data

    def _ensure_directory(self) -> None:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)
        if not _trusted_dir(self.directory):
            raise CacheInvalid("it is not a directory owned by the exporter's user and writable by nobody else")

    def _prune(self, keep: Path) -> None:
        """Keep the newest few entries of the same object name (old kernels', old sources')."""
        prefix = keep.name[: keep.name.rfind("-") + 1]
        siblings = []
        for candidate in self.directory.glob(prefix + "*.json"):
            if candidate == keep or candidate.name[len(prefix):-len(".json")].count("-"):
                continue
            with contextlib.suppress(OSError):
                siblings.append((candidate.stat().st_mtime_ns, candidate))
        siblings.sort(reverse=True)
        for _, old in siblings[KEEP_PER_NAME - 1:]:
            with contextlib.suppress(OSError):
                old.unlink()


def _trusted_dir(directory: Path) -> bool:
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def entry_from(maps: Iterable[MapDef], programs: Iterable[ProgDef], not_compiled: Mapping[str, str],
               extra: Mapping[str, Any]) -> Entry:
    return Entry(tuple(maps), tuple(programs), dict(not_compiled), dict(extra))
