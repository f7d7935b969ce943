"""Addresses and ports as the kernel filter maps hold them."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

ADDR_KEY_SIZE = 16
PORT_WORDS = 1024
_WORD = struct.Struct("<Q")


def address_key(address: str) -> bytes:
    """16-byte map key for an IP address: IPv6 as is, IPv4 as ``::ffff:a.b.c.d``.

    Raises ValueError for text that is not an IP address.
    """
    ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def address_text(key: bytes) -> str:
    """Normalized text of a map key; IPv4-mapped keys come back as dotted quads."""
    if len(key) != ADDR_KEY_SIZE:
        raise ValueError(f"address key must be {ADDR_KEY_SIZE} bytes, got {len(key)}")
    ip = ipaddress.IPv6Address(key)
    mapped = ip.ipv4_mapped
    return str(mapped) if mapped is not None else str(ip)


def normalize(address: str) -> str:
    """One spelling per address (what labels and lookups use)."""
    return address_text(address_key(address))


def port_bitmap(ports: Iterable[int]) -> dict[int, int]:
    """Words of the 65536-bit port bitmap that have any bit set: {word index: bits}."""
    words: dict[int, int] = {}
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        words[port >> 6] = words.get(port >> 6, 0) | (1 << (port & 63))
    return words


def address_fold(key: bytes) -> int:
    """The 16-bit fold the kernel's address pre-filter indexes by (tt_fold in tcptrace.h)."""
    hi, lo = struct.unpack("<QQ", key)
    x = int(hi) ^ int(lo)
    x ^= x >> 32
    x ^= x >> 16
    return x & 0xFFFF


def fold_bitmap(keys: Iterable[bytes]) -> dict[int, int]:
    """Words of the 65536-bit address pre-filter with any bit set."""
    words: dict[int, int] = {}
    for key in keys:
        fold = address_fold(key)
        words[fold >> 6] = words.get(fold >> 6, 0) | (1 << (fold & 63))
    return words


def word_bytes(bits: int) -> bytes:
    return _WORD.pack(bits)
