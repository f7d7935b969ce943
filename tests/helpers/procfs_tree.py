"""A small, complete HOST_PROC_PATH tree, and the hostile things that can be put where one of its files belongs."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

#: What can stand where a kernel file is expected. "huge" is a 100 MB file (sparse, NUL bytes).
HOSTILE_KINDS = ("dev_zero", "fifo", "directory", "symlink_loop", "huge")
HUGE_BYTES = 100 * 1024 * 1024

#: The built-in plugins that read HOST_PROC_PATH without eBPF.
PROCFS_PLUGINS = ("disk_stats", "disk_usage", "meminfo", "nfs_stats", "procstat", "psi")

#: Every file under HOST_PROC_PATH the procfs plugins read, and who reads it
#: (a test checks this list against the files a real run opens).
FILES: dict[str, tuple[str, ...]] = {
    "diskstats": ("disk_stats",),
    "1/mounts": ("disk_usage",),
    "1/mountstats": ("nfs_stats",),
    "meminfo": ("meminfo",),
    "stat": ("procstat",),
    "pressure/cpu": ("psi",),
    "pressure/io": ("psi",),
    "pressure/memory": ("psi",),
}


def build_tree(root: Path) -> Path:
    """A HOST_PROC_PATH with two virtio disks, / on vda1, one nconnect=16 NFS mount and this host's counters."""
    (root / "1").mkdir(parents=True)
    (root / "pressure").mkdir()
    shutil.copy(REPO / "plugins/disk_latency/tests/data/diskstats_two_virtio_disks.txt", root / "diskstats")
    (root / "1" / "mounts").write_text("/dev/vda1 / ext4 rw,relatime 0 0\n/dev/vdb /tmp ext4 ro,relatime 0 0\n")
    shutil.copy(REPO / "plugins/nfs_stats/tests/data/mountstats_real_nconnect16.txt", root / "1" / "mountstats")
    # statfs of / and /tmp through PID 1's root: this host's own /.
    (root / "1" / "root").symlink_to("/")
    (root / "self").symlink_to("1")
    for name in ("meminfo", "stat", "pressure/cpu", "pressure/io", "pressure/memory"):
        (root / name).write_bytes(Path("/proc", name).read_bytes())
    return root


def make_hostile(path: Path, kind: str) -> None:
    """Replace whatever is at ``path`` with ``kind``."""
    remove(path)
    if kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink_loop":
        path.symlink_to(path.name)
    elif kind == "huge":
        with path.open("wb") as f:
            f.truncate(HUGE_BYTES)
    else:
        raise AssertionError(kind)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


@functools.cache
def metric_owners() -> dict[str, str]:
    """Exposed metric name (as declared, with ``crusoe_vm_``) -> the built-in plugin that declares it."""
    from crusoe_metrics_exporter import host

    return {"crusoe_vm_" + m.name: rec.name for rec in host.discover() if rec.spec is not None
            for m in rec.spec.metrics}


def owner(sample_name: str, owners: dict[str, str]) -> str | None:
    """The plugin a sample line belongs to (histogram parts and counters without _total resolved)."""
    if sample_name in owners:
        return owners[sample_name]
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix):
            base = sample_name.removesuffix(suffix)
            return owners.get(base) or owners.get(base + "_total")
    return owners.get(sample_name + "_total")


#: One sample line of an exposition: name, labels (with braces, or empty).
_SAMPLE = re.compile(r"^(crusoe_vm_[a-zA-Z0-9_]+)(\{[^}]*\})? ", re.MULTILINE)


def series_by_plugin(text: str, error_counters: bool = False) -> dict[str, set[str]]:
    """Each procfs plugin's own series in an exposition (name and labels, no value): what must survive another
    plugin's bad file. Its ``*_collection_errors_total`` counters are left out unless ``error_counters``."""
    owners = metric_owners()
    out: dict[str, set[str]] = {name: set() for name in PROCFS_PLUGINS}
    for name, labels in _SAMPLE.findall(text):
        plugin = owner(name, owners)
        if plugin in out and (error_counters or not name.endswith("_collection_errors_total")):
            out[plugin].add(name + labels)
    return out
