"""Stand-ins for a loaded eBPF object's maps, holding the exact bytes a kernel program writes.

For collector tests that feed the fold malformed or hand-made entries; the
real kernel path is tested with real programs (host or guest).
"""

from __future__ import annotations


class MapStandIn:
    """A ``BpfMap`` kept in a dict: key bytes -> value bytes."""

    def __init__(self, entries: dict[bytes, bytes] | None = None) -> None:
        self.entries = dict(entries or {})

    def lookup(self, key: bytes) -> bytes | None:
        return self.entries.get(key)

    def update(self, key: bytes, value: bytes) -> None:
        self.entries[key] = value

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None

    def keys(self) -> list[bytes]:
        return list(self.entries)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.entries.items())
