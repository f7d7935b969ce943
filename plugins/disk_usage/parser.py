"""Parsing the kernel's mount table (/proc/<pid>/mounts) and choosing the mounts to report."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

#: The kernel writes space, tab, newline and backslash in mount fields as
#: three-digit octal escapes (\040, \011, \012, \134); only byte values are valid.
_OCTAL_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")

DEFAULT_DEVICE_INCLUDE = r"^/dev/(vd[a-z]+\d*)$"


class MountEntry(NamedTuple):
    source: str
    #: The mount point as the kernel's path, octal escapes decoded (bytes: a path need not be UTF-8).
    mount_point: bytes
    fstype: str
    #: The mount options as the host's table lists them ("rw,relatime"); empty when the line has none.
    options: str = ""

    @property
    def read_only(self) -> bool | None:
        """Whether the host mounted it read-only; None when the line carries no options."""
        return "ro" in self.options.split(",") if self.options else None


class MountsResult(NamedTuple):
    entries: list[MountEntry]
    #: Lines that are not a mount record (fewer than two fields, relative mount point).
    errors: int


def unescape(field: bytes) -> bytes:
    """Undo the kernel's octal escaping of a mounts field."""
    if b"\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda m: bytes((int(m.group(1), 8),)), field)


def parse_mounts(data: bytes) -> MountsResult:
    """Every mount record in ``data`` (``source mount_point fstype options dump pass``).

    The seed required two fields; so do we. Blank lines are ignored.
    """
    entries: list[MountEntry] = []
    errors = 0
    for line in data.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].startswith(b"/"):
            errors += 1
            continue
        source = unescape(parts[0]).decode("utf-8", "replace")
        fstype = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
        options = parts[3].decode("utf-8", "replace") if len(parts) > 3 else ""
        entries.append(MountEntry(source, unescape(parts[1]), fstype, options))
    return MountsResult(entries, errors)


class SelectedMount(NamedTuple):
    device: str
    mount_point: str
    #: The raw mount point, for statfs.
    path: bytes
    #: From the host's mount table (None: the table does not say); statfs's flag is the fallback.
    read_only: bool | None = None


class MountSelector:
    """Which mounts are reported, and under which ``device`` label.

    ``include`` is searched in the mount source; its named group ``device``,
    else its first group, else the source without ``/dev/`` is the label.
    ``exclude`` (on the source) and ``mount_point_exclude`` (on the decoded
    mount point) drop mounts. Each device is reported once, at its first
    mount in the table: later lines are bind mounts or re-mounts of the same
    filesystem and would repeat the same numbers. A mount hidden by a later
    mount on the same mount point is never used: its statfs would measure
    the filesystem on top.
    """

    def __init__(self, include: str = DEFAULT_DEVICE_INCLUDE, exclude: str = "", mount_point_exclude: str = ""
                 ) -> None:
        self.include = re.compile(include) if include else None
        self.exclude = re.compile(exclude) if exclude else None
        self.mount_point_exclude = re.compile(mount_point_exclude) if mount_point_exclude else None

    def device_label(self, source: str) -> str | None:
        if self.exclude is not None and self.exclude.search(source):
            return None
        if self.include is None:
            return source.removeprefix("/dev/")
        m = self.include.search(source)
        if m is None:
            return None
        if "device" in m.re.groupindex:
            return m.group("device") or None
        if m.re.groups:
            return m.group(1) or None
        return source.removeprefix("/dev/")

    def select(self, entries: Iterable[MountEntry]) -> list[SelectedMount]:
        entries = list(entries)
        # A mount point listed again further down is mounted over: statfs on
        # it reaches the top filesystem only, so the hidden one is skipped
        # (its device is then reported at its next visible mount, if any).
        top = {entry.mount_point: i for i, entry in enumerate(entries)}
        chosen: list[SelectedMount] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if top[entry.mount_point] != i:
                continue
            device = self.device_label(entry.source)
            if device is None or device in seen:
                continue
            mount_point = entry.mount_point.decode("utf-8", "replace")
            if self.mount_point_exclude is not None and self.mount_point_exclude.search(mount_point):
                continue
            seen.add(device)
            chosen.append(SelectedMount(device, mount_point, entry.mount_point, entry.read_only))
        return chosen
