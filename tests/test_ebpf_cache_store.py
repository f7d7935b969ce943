"""The eBPF compile cache's store: keys, integrity and trust checks, without the kernel."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from crusoe_metrics_exporter.ebpf import cache
from crusoe_metrics_exporter.ebpf.cache import CacheInvalid, CompileCache, Entry, MapDef, ProgDef

SOURCE = "int f(void *ctx) { return 0; }"
REQUEST = {"name": "demo", "source": SOURCE, "cflags": ["-DX=1"], "functions": [{"fn": "f", "prog_type": 5}]}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def _program(map_fd: int = 7) -> bytes:
    # r1 = map fd (ld_imm64, two slots), r0 = 0, exit
    return _insn(0x18, 1, 1, 0, map_fd) + _insn(0, 0, 0, 0, 0) + _insn(0xB7, 0, 0, 0, 0) + _insn(0x95)


def _entry() -> Entry:
    insns = _program()
    refs = cache.map_references(insns, {7: "counts"})
    return Entry((MapDef("counts", 2, 4, 8, 16, 0),),
                 (ProgDef("f", 5, insns, "GPL", map_refs=refs),), {"g": "needs X from BTF"}, {"constants": {}})


def _material(**changes: Any) -> dict[str, Any]:
    material = cache.key_material({**REQUEST, **changes}, None, None)
    return material


@pytest.fixture
def store(tmp_path: Path) -> CompileCache:
    directory = tmp_path / "ebpf-cache"
    return CompileCache(directory)


def test_round_trip_and_relocation(store: CompileCache) -> None:
    material = _material()
    path = store.store("demo", material, _entry())
    assert path is not None and (os.stat(path).st_mode & 0o777) == 0o600
    loaded = store.load("demo", material)
    assert loaded == _entry()
    relocated = loaded.programs[0].relocated({"counts": 42})
    assert struct.unpack_from("<i", relocated, 4)[0] == 42
    assert relocated[8:] == _program()[8:]


def test_key_changes_with_source_flags_and_kernel(store: CompileCache, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _material()
    keys = {cache.key_of(base), cache.key_of(_material(source=SOURCE + " ")),
            cache.key_of(_material(cflags=["-DX=2"]))}
    real_uname = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((*real_uname[:2], "9.9.9-other", *real_uname[3:])))
    keys.add(cache.key_of(_material()))
    assert len(keys) == 4
    store.store("demo", base, _entry())
    # Another kernel release computes another key: a miss, and the old entry is left alone.
    assert store.load("demo", _material()) is None
    monkeypatch.undo()
    assert store.load("demo", base) is not None


def test_key_changes_with_kernel_headers_and_bcc(tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    (headers / "include/generated").mkdir(parents=True)
    autoconf = headers / "include/generated/autoconf.h"
    autoconf.write_text("#define CONFIG_A 1\n")
    bcc_dir = tmp_path / "bcc"
    bcc_dir.mkdir()
    (bcc_dir / "version.py").write_text("__version__ = '0.26.0'\n")
    keys = [cache.key_of(cache.key_material(REQUEST, str(headers), bcc_dir))]
    autoconf.write_text("#define CONFIG_A 1\n#define CONFIG_B 1\n")
    keys.append(cache.key_of(cache.key_material(REQUEST, str(headers), bcc_dir)))
    (bcc_dir / "version.py").write_text("__version__ = '0.29.1'\n")
    keys.append(cache.key_of(cache.key_material(REQUEST, str(headers), bcc_dir)))
    assert len(set(keys)) == 3


def test_corrupted_entry_is_discarded(store: CompileCache) -> None:
    material = _material()
    path = store.store("demo", material, _entry())
    assert path is not None
    document = json.loads(path.read_bytes())
    document["payload"]["maps"][0]["max_entries"] = 1 << 20  # content no longer matches its checksum
    path.write_text(json.dumps(document))
    assert store.load("demo", material) is None
    assert not path.exists()
    path.write_bytes(b"\x00garbage")
    assert store.load("demo", material) is None
    assert not path.exists()
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000)  # deeper than the JSON parser recurses
    os.chmod(path, 0o600)
    assert store.load("demo", material) is None
    assert not path.exists()


def test_entry_for_other_inputs_under_this_name_is_refused(store: CompileCache) -> None:
    other = _material(source="int f(void *ctx) { return 1; }")
    foreign = store.store("demo", other, _entry())
    material = _material()
    assert foreign is not None
    foreign.rename(store.path_for("demo", cache.key_of(material)))
    assert store.load("demo", material) is None
    assert not store.path_for("demo", cache.key_of(material)).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_file_of_another_user_is_not_used_nor_removed(store: CompileCache) -> None:
    material = _material()
    path = store.store("demo", material, _entry())
    assert path is not None
    os.chown(path, 65534, 65534)
    assert store.load("demo", material) is None
    assert path.exists()  # not ours: refused, left for its owner


def test_group_writable_file_or_directory_is_refused(store: CompileCache) -> None:
    material = _material()
    path = store.store("demo", material, _entry())
    assert path is not None
    path.chmod(0o620)
    assert store.load("demo", material) is None
    path = store.store("demo", material, _entry())
    assert path is not None
    store.directory.chmod(0o770)
    assert store.load("demo", material) is None
    assert store.store("demo", material, _entry()) is None


def test_symlinked_entry_is_refused(store: CompileCache, tmp_path: Path) -> None:
    material = _material()
    path = store.store("demo", material, _entry())
    assert path is not None
    target = tmp_path / "elsewhere.json"
    path.rename(target)
    path.symlink_to(target)
    assert store.load("demo", material) is None


def test_map_reference_must_match_the_instructions(store: CompileCache) -> None:
    payload = _entry().payload()
    payload["programs"][0]["map_refs"] = [[2, "counts"]]  # instruction 2 is "r0 = 0"
    with pytest.raises(CacheInvalid, match="does not match"):
        cache.parse_payload(payload)
    payload["programs"][0]["map_refs"] = [[0, "missing"]]
    with pytest.raises(CacheInvalid):
        cache.parse_payload(payload)


def test_programs_with_other_pseudo_loads_are_not_cached() -> None:
    with pytest.raises(CacheInvalid, match="cannot be cached"):
        cache.map_references(_insn(0x18, 1, 2, 0, 7) + _insn(0) + _insn(0x95), {7: "counts"})
    with pytest.raises(CacheInvalid, match="no map"):
        cache.map_references(_program(map_fd=9), {7: "counts"})


def test_old_entries_of_a_name_are_pruned(store: CompileCache) -> None:
    for i in range(cache.KEEP_PER_NAME + 2):
        store.store("demo", _material(cflags=[f"-DX={i}"]), _entry())
    store.store("demo-two", _material(name="demo-two"), _entry())
    names = sorted(p.name for p in store.directory.iterdir())
    assert sum(n.startswith("demo-two-") for n in names) == 1
    assert len(names) == cache.KEEP_PER_NAME + 1
