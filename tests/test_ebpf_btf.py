"""The BTF reader: a synthetic blob built here (every path), and the running kernel's own BTF."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from crusoe_metrics_exporter.ebpf.btf import (
    BTF_VMLINUX,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_FUNC_PROTO,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    Btf,
    BtfError,
    mentions,
)


class Builder:
    """Assembles a BTF blob type by type (ids from 1, in call order)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def blob(self) -> bytes:
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return header + bytes(self.types) + bytes(self.strings)


def _sample() -> bytes:
    b = Builder()
    u32 = b.add("unsigned int", KIND_INT, 0, 4, struct.pack("<I", 32))  # 1
    ptr = b.add("", KIND_PTR, 0, 0)  # 2: void *
    # 3: union { u32 a; struct {...} } is anonymous; 4: the anonymous struct inside it.
    inner = b.add("", KIND_STRUCT, 2, 8, struct.pack("<III", b.name("lo"), u32, 0)
                  + struct.pack("<III", b.name("hi"), u32, 32))
    union = b.add("", KIND_UNION, 2, 8, struct.pack("<III", b.name("a"), u32, 0)
                  + struct.pack("<III", 0, inner, 0))
    b.add("request", KIND_STRUCT, 0, 0)  # a declaration: skipped for the definition
    # struct request { void *q; union {...}; u32 flags:3 (bitfield, kflag); }
    b.add("request", KIND_STRUCT, 3, 24, struct.pack("<III", b.name("q"), ptr, 0)
          + struct.pack("<III", 0, union, 8 * 8)
          + struct.pack("<III", b.name("flags"), u32, (3 << 24) | (16 * 8)), kflag=1)
    b.add("rqf_flags", KIND_ENUM, 2, 4, struct.pack("<Ii", b.name("__RQF_STARTED"), 0)
          + struct.pack("<Ii", b.name("__RQF_FLUSH_SEQ"), -2))
    b.add("big", KIND_ENUM64, 1, 8, struct.pack("<III", b.name("HUGE"), 5, 1))
    # typedef void (*btf_trace_block_rq_complete)(void *, struct request *, u32, u32)
    proto = b.add("", KIND_FUNC_PROTO, 4, 0, struct.pack("<II", 0, ptr) * 4)
    fn_ptr = b.add("", KIND_PTR, 0, proto)
    b.add("btf_trace_block_rq_complete", KIND_TYPEDEF, 0, fn_ptr)
    return b.blob()


def test_struct_members_flatten_anonymous_unions_and_know_bitfields() -> None:
    btf = Btf(_sample())
    members = btf.struct_members("request")
    assert {name: m.offset for name, m in members.items()} == {"q": 0, "a": 8, "lo": 8, "hi": 12, "flags": 16}
    assert btf.member_offset("request", "hi") == 12
    with pytest.raises(BtfError, match="bitfield"):
        btf.member_offset("request", "flags")
    with pytest.raises(BtfError, match="no member"):
        btf.member_offset("request", "nope")
    with pytest.raises(BtfError, match="no struct"):
        btf.struct_members("gendisk")


def test_enums_typedefs_and_tracepoint_prototypes() -> None:
    btf = Btf(_sample())
    assert btf.enum_value("__RQF_FLUSH_SEQ") == -2 and btf.enum_value("__RQF_STARTED") == 0
    assert btf.enum_value("HUGE") == (1 << 32) | 5
    with pytest.raises(BtfError):
        btf.enum_value("__RQF_NOPE")
    type_id = btf.tracepoint_type_id("block_rq_complete")
    assert btf.kind(type_id) == KIND_TYPEDEF and btf.name(type_id) == "btf_trace_block_rq_complete"
    assert btf.tracepoint_arg_count("block_rq_complete") == 3
    with pytest.raises(BtfError):
        btf.tracepoint_type_id("block_rq_issue")


def test_garbage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BtfError):
        Btf(b"\x00" * 40)
    with pytest.raises(BtfError):
        Btf(b"short")
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 13, 0, 1) + b"\x00"
    with pytest.raises(BtfError):
        Btf(header)  # the type section runs past the blob
    missing = tmp_path / "vmlinux"
    with pytest.raises(BtfError, match="cannot read"):
        Btf.vmlinux(missing)
    missing.write_bytes(_sample())
    assert mentions("btf_trace_block_rq_complete", missing)
    assert not mentions("btf_trace_block_rq", missing)
    assert not mentions("anything", tmp_path / "absent")


def test_the_running_kernels_btf() -> None:
    if not BTF_VMLINUX.exists():
        pytest.skip("!!! no /sys/kernel/btf/vmlinux on this kernel !!!")
    btf = Btf.vmlinux()
    sock = btf.struct_members("sock_common")
    # skc_daddr/skc_dport sit in the fixed addrpair/portpair words; v6 after them.
    assert sock["skc_daddr"].offset == 0 and sock["skc_rcv_saddr"].offset == 4
    assert sock["skc_dport"].offset == 12 and sock["skc_num"].offset == 14
    assert sock["skc_v6_daddr"].offset > sock["skc_family"].offset
    assert btf.tracepoint_arg_count("block_rq_complete") == 3
    assert btf.tracepoint_arg_count("block_rq_issue") == 1
    assert mentions("btf_trace_block_rq_issue")
