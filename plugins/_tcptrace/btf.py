"""Offsets of the ``struct sock_common`` fields the filter reads, from kernel BTF.

The C reads the peer address and port at raw offsets instead of through
kernel headers: the headers installed on a host often belong to another
kernel release than the one running, while ``/sys/kernel/btf/vmlinux``
always describes the running kernel.
"""

from __future__ import annotations

import struct
from pathlib import Path

BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")

#: Values every 64-bit kernel since 4.x has had; used when BTF is missing.
DEFAULT_OFFSETS = {"skc_daddr": 0, "skc_dport": 12, "skc_family": 16, "skc_v6_daddr": 56}

_KIND_INT, _KIND_PTR, _KIND_ARRAY, _KIND_STRUCT, _KIND_UNION, _KIND_ENUM = 1, 2, 3, 4, 5, 6
_KIND_FWD, _KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT = 7, 8, 9, 10, 11
_KIND_FUNC, _KIND_FUNC_PROTO, _KIND_VAR, _KIND_DATASEC, _KIND_FLOAT = 12, 13, 14, 15, 16
_KIND_DECL_TAG, _KIND_TYPE_TAG, _KIND_ENUM64 = 17, 18, 19
_MODIFIERS = (_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG)
# Bytes that follow the 12-byte common header, per kind (x vlen where noted).
_FIXED_EXTRA = {_KIND_INT: 4, _KIND_ARRAY: 12, _KIND_VAR: 4, _KIND_DECL_TAG: 4}
_PER_VLEN = {_KIND_STRUCT: 12, _KIND_UNION: 12, _KIND_ENUM: 8, _KIND_FUNC_PROTO: 8, _KIND_DATASEC: 12,
             _KIND_ENUM64: 12}


class BtfError(ValueError):
    """The BTF blob is not what we can read."""


def struct_member_offsets(blob: bytes, struct_name: str) -> dict[str, int]:
    """Byte offsets of all members of ``struct_name``, anonymous unions/structs flattened."""
    if len(blob) < 24:
        raise BtfError("BTF blob too short")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", blob)
    if magic != 0xEB9F:
        raise BtfError(f"bad BTF magic {magic:#x}")
    types_start = hdr_len + type_off
    strings_start = hdr_len + str_off
    if types_start + type_len > len(blob) or strings_start + str_len > len(blob):
        raise BtfError("BTF sections out of bounds")

    def name(off: int) -> str:
        start = strings_start + off
        end = blob.index(b"\0", start)
        return blob[start:end].decode("utf-8", "replace")

    # id -> (kind, name offset, size_or_type, members[(name_off, type, bit_offset)])
    types: list[tuple[int, int, int, list[tuple[int, int, int]]]] = [(0, 0, 0, [])]
    pos, end = types_start, types_start + type_len
    while pos < end:
        name_off, info, size_or_type = struct.unpack_from("<III", blob, pos)
        pos += 12
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        members: list[tuple[int, int, int]] = []
        if kind in (_KIND_STRUCT, _KIND_UNION):
            for _ in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", blob, pos)
                pos += 12
                members.append((m_name, m_type, (m_off & 0xFFFFFF) if kflag else m_off))
        else:
            pos += _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen
        types.append((kind, name_off, size_or_type, members))

    def resolve(type_id: int) -> int:
        for _ in range(32):
            kind, _n, target, _m = types[type_id]
            if kind not in _MODIFIERS:
                return type_id
            type_id = target
        raise BtfError("type modifier chain too long")

    target_id = next(
        (i for i, t in enumerate(types) if t[0] == _KIND_STRUCT and t[3] and name(t[1]) == struct_name), None
    )
    if target_id is None:
        raise BtfError(f"struct {struct_name} not in BTF")

    out: dict[str, int] = {}

    def walk(type_id: int, base: int) -> None:
        for m_name, m_type, bit_off in types[type_id][3]:
            inner = resolve(m_type)
            if m_name == 0 and types[inner][0] in (_KIND_STRUCT, _KIND_UNION):
                walk(inner, base + bit_off // 8)
            else:
                out.setdefault(name(m_name), base + bit_off // 8)

    walk(target_id, 0)
    return out


def sock_common_offsets(path: Path = BTF_VMLINUX) -> tuple[dict[str, int], str]:
    """The offsets the C needs and where they came from ("btf" or "defaults: why")."""
    try:
        found = struct_member_offsets(path.read_bytes(), "sock_common")
        return {k: found[k] for k in DEFAULT_OFFSETS}, "btf"
    except (OSError, BtfError, KeyError) as exc:
        return dict(DEFAULT_OFFSETS), f"defaults ({type(exc).__name__}: {exc})"


def offset_cflags(offsets: dict[str, int]) -> tuple[str, ...]:
    return (
        f"-DSKC_DADDR_OFF={offsets['skc_daddr']}",
        f"-DSKC_DPORT_OFF={offsets['skc_dport']}",
        f"-DSKC_FAMILY_OFF={offsets['skc_family']}",
        f"-DSKC_V6_DADDR_OFF={offsets['skc_v6_daddr']}",
    )
