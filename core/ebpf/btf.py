"""What the running kernel's BTF (``/sys/kernel/btf/vmlinux``) says about its own types.

Programs read kernel structures at offsets taken from here rather than from
kernel headers: the headers installed on a host often belong to another
release than the running kernel (this project's CI host compiles against
6.1 headers on a 6.18 kernel), while the kernel's BTF always describes the
kernel that runs. The same blob gives the type id a ``tp_btf`` program is
loaded against (the ``btf_trace_<event>`` typedef) and enum values that
changed between releases (``__RQF_FLUSH_SEQ``).

Parsing the whole blob (~130k types, 5 MB) costs a few hundred milliseconds
and tens of MB of transient memory, so it happens in the short-lived loader
helper; the exporter itself only ever asks :func:`mentions`, a byte search.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.files import open_regular, read_file

BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
#: vmlinux BTF is 5-10 MiB; anything far beyond that is not the kernel's (read whole, or streamed, at most this).
BTF_READ_LIMIT = 64 * 1024 * 1024

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
# Bytes that follow the 12-byte common header: fixed per kind, plus per vlen entry.
_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_VLEN = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8, KIND_DATASEC: 12, KIND_ENUM64: 12}
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")


class BtfError(ValueError):
    """The BTF blob is unreadable, or does not have what was asked for."""


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    #: Size in bits when the member is a bitfield, else 0.
    bitfield_size: int


class Btf:
    """An index over one BTF blob: kinds, names and where each type's data sits."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _HEADER.size:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(blob)
        if magic != 0xEB9F:
            raise BtfError(f"bad BTF magic {magic:#x}")
        self._blob = blob
        types_start = hdr_len + type_off
        self._strings = hdr_len + str_off
        self._strings_end = self._strings + str_len
        if types_start + type_len > len(blob) or self._strings_end > len(blob):
            raise BtfError("BTF sections out of bounds")
        # Per type id (0 is "void"): info word, name offset, size-or-type, data position.
        self._info = array("I", [0])
        self._name = array("I", [0])
        self._ref = array("I", [0])
        self._pos = array("Q", [0])
        pos, end = types_start, types_start + type_len
        while pos < end:
            name_off, info, size_or_type = _TYPE.unpack_from(blob, pos)
            pos += 12
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._info.append(info)
            self._name.append(name_off)
            self._ref.append(size_or_type)
            self._pos.append(pos)
            pos += _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen
        if pos != end:
            raise BtfError("BTF type section does not end on a type boundary")

    @classmethod
    def vmlinux(cls, path: Path = BTF_VMLINUX) -> Btf:
        try:
            return cls(read_file(path, BTF_READ_LIMIT))
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror or exc}") from None

    def kind(self, type_id: int) -> int:
        return (self._info[type_id] >> 24) & 0x1F

    def _vlen(self, type_id: int) -> int:
        return self._info[type_id] & 0xFFFF

    def name(self, type_id: int) -> str:
        return self._string(self._name[type_id])

    def _string(self, off: int) -> str:
        start = self._strings + off
        end = self._blob.index(b"\0", start, self._strings_end)
        return self._blob[start:end].decode("utf-8", "replace")

    def _string_offsets(self, name: str) -> set[int]:
        """Offsets in the string section where ``name`` is a whole string."""
        needle = name.encode()
        out: set[int] = set()
        blob, lo, hi = self._blob, self._strings, self._strings_end
        if blob[lo : lo + len(needle) + 1] == needle + b"\0":
            out.add(0)
        at = blob.find(b"\0" + needle + b"\0", lo, hi)
        while at >= 0:
            out.add(at + 1 - lo)
            at = blob.find(b"\0" + needle + b"\0", at + 1, hi)
        return out

    def find(self, name: str, kind: int) -> int:
        """The id of the type named ``name`` of ``kind``; BtfError when there is none."""
        offsets = self._string_offsets(name)
        if offsets:
            for type_id in range(1, len(self._name)):
                # An empty struct of the name (a declaration) is skipped for one with members.
                if (self._name[type_id] in offsets and self.kind(type_id) == kind
                        and (kind != KIND_STRUCT or self._vlen(type_id))):
                    return type_id
        raise BtfError(f"no {_KIND_NAMES.get(kind, kind)} {name} in the kernel's BTF")

    def resolve(self, type_id: int) -> int:
        """Skip typedefs, const, volatile and the like."""
        for _ in range(64):
            if self.kind(type_id) not in _MODIFIERS:
                return type_id
            type_id = self._ref[type_id]
        raise BtfError("type modifier chain too long")

    def _members(self, type_id: int) -> Iterator[tuple[int, int, int, int]]:
        """(name offset, type id, byte offset, bitfield size) of a struct's or union's members."""
        kflag = self._info[type_id] >> 31
        pos = self._pos[type_id]
        for _ in range(self._vlen(type_id)):
            m_name, m_type, m_off = _TYPE.unpack_from(self._blob, pos)
            pos += 12
            bit_off, bits = (m_off & 0xFFFFFF, m_off >> 24) if kflag else (m_off, 0)
            yield m_name, m_type, bit_off // 8, bits

    def struct_members(self, struct_name: str) -> dict[str, Member]:
        """Every member of ``struct_name`` by name, anonymous unions and structs flattened."""
        out: dict[str, Member] = {}

        def walk(type_id: int, base: int) -> None:
            for m_name, m_type, off, bits in self._members(type_id):
                inner = self.resolve(m_type)
                if m_name == 0 and self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    walk(inner, base + off)
                elif m_name:
                    name = self._string(m_name)
                    out.setdefault(name, Member(name, base + off, bits))

        walk(self.find(struct_name, KIND_STRUCT), 0)
        return out

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of a (non-bitfield) member; BtfError when missing or a bitfield."""
        found = self.struct_members(struct_name).get(member)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member} in the kernel's BTF")
        if found.bitfield_size:
            raise BtfError(f"struct {struct_name} member {member} is a bitfield")
        return found.offset

    def enum_value(self, enumerator: str) -> int:
        """The value of an enumerator of any enum (names are unique across the kernel's enums)."""
        offsets = self._string_offsets(enumerator)
        if offsets:
            for type_id in range(1, len(self._name)):
                kind = self.kind(type_id)
                if kind not in (KIND_ENUM, KIND_ENUM64):
                    continue
                pos = self._pos[type_id]
                step = 8 if kind == KIND_ENUM else 12
                for i in range(self._vlen(type_id)):
                    entry = pos + i * step
                    name_off, lo = struct.unpack_from("<II", self._blob, entry)
                    if name_off in offsets:
                        if kind == KIND_ENUM64:
                            hi: int = struct.unpack_from("<I", self._blob, entry + 8)[0]
                            return int(lo) | hi << 32
                        signed: int = struct.unpack_from("<i", self._blob, entry + 4)[0]
                        return signed
        raise BtfError(f"no enumerator {enumerator} in the kernel's BTF")

    def tracepoint_type_id(self, event: str) -> int:
        """The id a ``tp_btf`` program for ``event`` is loaded against: the ``btf_trace_<event>`` typedef."""
        return self.find(f"btf_trace_{event}", KIND_TYPEDEF)

    def tracepoint_arg_count(self, event: str) -> int:
        """How many arguments the tracepoint passes (its prototype's parameters, minus the context)."""
        ptr = self.resolve(self.tracepoint_type_id(event))
        if self.kind(ptr) != KIND_PTR:
            raise BtfError(f"btf_trace_{event} is not a function pointer")
        proto = self.resolve(self._ref[ptr])
        if self.kind(proto) != KIND_FUNC_PROTO:
            raise BtfError(f"btf_trace_{event} is not a function pointer")
        return self._vlen(proto) - 1


_KIND_NAMES = {KIND_STRUCT: "struct", KIND_TYPEDEF: "typedef", KIND_FUNC: "function", KIND_ENUM: "enum"}


def mentions(name: str, path: Path = BTF_VMLINUX) -> bool:
    """Whether ``name`` is one of the strings of the kernel's BTF: a cheap "has this type" for planning.

    The file is streamed in chunks (sysfs cannot be mapped), so this costs a
    few milliseconds and no lasting memory; the loader helper does the exact
    lookup when it compiles.
    """
    needle = b"\0" + name.encode() + b"\0"
    tail = b""
    try:
        with open_regular(path) as fh:
            for _ in range(BTF_READ_LIMIT >> 20):
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle) :]
    except OSError:
        return False
    return False
