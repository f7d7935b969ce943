"""Block device names and node_exporter-style device selection.

Shared by every plugin that reports per-disk metrics (whether it reads
/proc/diskstats or counts in eBPF), so they all select the same disks with
the same two options and label them with the same names.

Names come from the kernel's own table, /proc/diskstats, rather than from
/sys/block: /proc/diskstats lists partitions too, works under a mounted host
/proc in a container (where /sys is the container's), and is a single read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.files import read_limited
from crusoe_metrics_exporter.schema import option

#: Whole virtio disks (vda, vdb, ..., vdaa); partitions such as vda1 are not
#: matched, so a disk's I/O is never counted twice.
DEFAULT_DEVICE_INCLUDE = r"^vd[a-z]+$"


@dataclass(frozen=True)
class DeviceOptions:
    """The two device-selection options; a plugin's options class inherits them.

    ``class DiskStatsOptions(DeviceOptions): ...`` gives the plugin
    ``device_include`` and ``device_exclude`` in its ``[plugins.<name>]``
    table, and ``ctx.options.device_filter()`` builds the filter.
    """

    device_include: str = option(
        "regex", DEFAULT_DEVICE_INCLUDE,
        "Regular expression a kernel block device name must match to be reported (searched, so anchor it); "
        "empty means every device. The default selects whole virtio disks and no partitions.")
    device_exclude: str = option(
        "regex", "",
        "Regular expression of kernel block device names never reported, applied after device_include; "
        "empty excludes nothing.")

    def device_filter(self) -> DeviceFilter:
        return DeviceFilter(self.device_include, self.device_exclude)

#: A filter remembers its answers; the kernel's device set is small, but a
#: hostile /proc could feed endless distinct names, hence the bound.
_MATCH_CACHE_LIMIT = 4096


class DeviceFilter:
    """Selects devices the way node_exporter's device filter does.

    A device is reported when it matches ``include`` (if set) and does not
    match ``exclude`` (if set). Both are searched, not fully matched, exactly
    like Go's ``MatchString``.
    """

    def __init__(self, include: str = DEFAULT_DEVICE_INCLUDE, exclude: str = "") -> None:
        self.include = re.compile(include) if include else None
        self.exclude = re.compile(exclude) if exclude else None
        self._cache: dict[str, bool] = {}

    def matches(self, name: str) -> bool:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        ok = (self.include is None or self.include.search(name) is not None) and (
            self.exclude is None or self.exclude.search(name) is None
        )
        if len(self._cache) < _MATCH_CACHE_LIMIT:
            self._cache[name] = ok
        return ok

    def __repr__(self) -> str:
        inc = self.include.pattern if self.include else ""
        exc = self.exclude.pattern if self.exclude else ""
        return f"DeviceFilter(include={inc!r}, exclude={exc!r})"


def parse_device_table(text: str) -> dict[tuple[int, int], str]:
    """(major, minor) -> name from the first three columns of diskstats text.

    Lines that do not start with two integers and a name are skipped: this
    table only labels devices, so a damaged line must not cost the others.
    """
    table: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        major, minor, name = parts[0], parts[1], parts[2]
        if not (major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
            continue
        table[(int(major), int(minor))] = name
    return table


def device_names(host_proc: Path) -> dict[tuple[int, int], str]:
    """The kernel's (major, minor) -> device name table from ``host_proc``/diskstats.

    Returns an empty mapping when the file cannot be read (no block layer,
    wrong HOST_PROC_PATH); callers decide whether that is an error. One small
    read, cheap enough for a periodic background refresh.
    """
    try:
        content = read_limited(host_proc / "diskstats")
    except OSError:
        return {}
    return parse_device_table(content.data.decode("utf-8", "replace"))
