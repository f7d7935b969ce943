"""The public plugin SDK: everything a collector plugin may import from the exporter.

A plugin - built-in or third-party - imports from this module and from no
other part of ``crusoe_metrics_exporter``::

    from crusoe_metrics_exporter.sdk import MetricSpec, PluginSpec, Sample, Support, hookimpl

Stability promise
-----------------
Names listed in ``__all__`` here are the plugin API. Within one major
version of the package (and one :data:`CONTRACT_VERSION`) they are only
*added to*: a name is not removed or renamed, a function does not lose a
parameter, a dataclass does not lose a field, and a new parameter or field
always has a default. Anything that has to change incompatibly is first
deprecated (a ``DeprecationWarning`` for at least one minor release) and
removed only in the next major version, which also bumps
:data:`CONTRACT_VERSION` so the host can refuse a plugin written against
the old contract with a clear message instead of a traceback.

Every other module of the package (``host``, ``runner``, ``settings``,
``ebpf.runtime``, ``targets.directory``, ...) is internal: it may change in
any release. A test fails when a built-in plugin imports from one of them.

What is here
------------
* the contract: :class:`PluginSpec`, :class:`MetricSpec`, :class:`ConfigOption`,
  :class:`Sample`, :class:`HistogramValue`, :class:`Support`, :class:`Collector`,
  :class:`PluginContext`, :data:`hookimpl`;
* procfs: :func:`read_limited` reads a kernel text file whole with a size limit
  (a FIFO or device node put where a kernel file belongs is refused, never hangs);
  :func:`unreadable` turns a permission error on a host file into the reason
  ("<path> is unreadable: needs CAP_...") and the fix, as :class:`Unreadable`;
* capabilities: :func:`has_capability` (``"CAP_SYS_ADMIN"`` in the effective set?) and
  :func:`grant_hint`, the one wording of how to grant one in each shipped artefact;
* logging: :class:`ProblemLog` logs a collector's trouble when it changes, not every scrape;
* block devices: :class:`DeviceFilter` and :data:`DEVICE_OPTIONS` (node_exporter's
  device_include/device_exclude), :func:`device_names`;
* histograms: :func:`geometric_bounds`, :func:`bucket_index`, :func:`cumulative_buckets`;
* the eBPF runtime: :class:`BpfSpec`, :class:`ProgramSpec`, :class:`Tracepoint`,
  :class:`Kprobe` to declare an object, :class:`EbpfService` (the ``ebpf`` shared
  service) which loads it into a :class:`LoadedBpf` with :class:`BpfMap` maps;
* target discovery: :class:`TargetDirectory` (the ``targets`` shared service) and
  the records it hands out, :class:`NfsServer`, :class:`NfsMount`,
  :class:`ObjstoreEndpoint`; :func:`volume_id` and friends for NFS devices.

The eBPF and target-discovery names are imported on first use, so a plugin
that needs neither does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crusoe_metrics_exporter.capabilities import Unreadable, grant_hint, unreadable
from crusoe_metrics_exporter.capabilities import has as has_capability
from crusoe_metrics_exporter.contract import (
    CONTRACT_VERSION,
    Collector,
    ConfigOption,
    HistogramValue,
    MetricSpec,
    MetricType,
    OptionType,
    PluginContext,
    PluginSpec,
    Sample,
    Support,
)
from crusoe_metrics_exporter.devices import (
    DEFAULT_DEVICE_INCLUDE,
    DEVICE_OPTIONS,
    DeviceFilter,
    device_names,
    parse_device_table,
)
from crusoe_metrics_exporter.histogram import bucket_index, cumulative_buckets, geometric_bounds
from crusoe_metrics_exporter.hookspecs import hookimpl
from crusoe_metrics_exporter.problems import ProblemLog
from crusoe_metrics_exporter.procfs import DEFAULT_READ_LIMIT, FileContent, read_limited

if TYPE_CHECKING:
    from crusoe_metrics_exporter.ebpf import (
        EBPF_SERVICE,
        AttachCandidate,
        AttachMethod,
        BpfMap,
        BpfSpec,
        BpfUnavailable,
        Kprobe,
        LoadedBpf,
        ProgramSpec,
        ProgramStats,
        ProgramStatus,
        Tracepoint,
        verify_only,
        want_macro,
    )
    from crusoe_metrics_exporter.ebpf.kernel import tracepoint_exists
    from crusoe_metrics_exporter.ebpf.service import EbpfService
    from crusoe_metrics_exporter.targets.addresses import normalize as normalize_address
    from crusoe_metrics_exporter.targets.directory import TARGETS_SERVICE, TargetDirectory
    from crusoe_metrics_exporter.targets.model import NfsMount, NfsServer, ObjstoreEndpoint
    from crusoe_metrics_exporter.targets.mounts import unescape as unescape_mount_field
    from crusoe_metrics_exporter.targets.volumes import volume_id, volume_pattern

#: name -> (module, attribute) for the parts imported on first use.
_LAZY: dict[str, tuple[str, str]] = {
    **{
        name: ("crusoe_metrics_exporter.ebpf", name)
        for name in (
            "EBPF_SERVICE", "AttachCandidate", "AttachMethod", "BpfMap", "BpfSpec", "BpfUnavailable", "Kprobe",
            "LoadedBpf", "ProgramSpec", "ProgramStats", "ProgramStatus", "Tracepoint", "verify_only", "want_macro",
        )
    },
    "tracepoint_exists": ("crusoe_metrics_exporter.ebpf.kernel", "tracepoint_exists"),
    "EbpfService": ("crusoe_metrics_exporter.ebpf.service", "EbpfService"),
    "normalize_address": ("crusoe_metrics_exporter.targets.addresses", "normalize"),
    "TARGETS_SERVICE": ("crusoe_metrics_exporter.targets.directory", "TARGETS_SERVICE"),
    "TargetDirectory": ("crusoe_metrics_exporter.targets.directory", "TargetDirectory"),
    "NfsMount": ("crusoe_metrics_exporter.targets.model", "NfsMount"),
    "NfsServer": ("crusoe_metrics_exporter.targets.model", "NfsServer"),
    "ObjstoreEndpoint": ("crusoe_metrics_exporter.targets.model", "ObjstoreEndpoint"),
    "unescape_mount_field": ("crusoe_metrics_exporter.targets.mounts", "unescape"),
    "volume_id": ("crusoe_metrics_exporter.targets.volumes", "volume_id"),
    "volume_pattern": ("crusoe_metrics_exporter.targets.volumes", "volume_pattern"),
}


if not TYPE_CHECKING:
    # Hidden from mypy: a module __getattr__ would make it accept any name
    # imported from here; it checks the TYPE_CHECKING imports above instead.

    def __getattr__(name: str) -> Any:
        try:
            module, attribute = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CONTRACT_VERSION",
    "DEFAULT_DEVICE_INCLUDE",
    "DEFAULT_READ_LIMIT",
    "DEVICE_OPTIONS",
    "EBPF_SERVICE",
    "TARGETS_SERVICE",
    "AttachCandidate",
    "AttachMethod",
    "BpfMap",
    "BpfSpec",
    "BpfUnavailable",
    "Collector",
    "ConfigOption",
    "DeviceFilter",
    "EbpfService",
    "FileContent",
    "HistogramValue",
    "Kprobe",
    "LoadedBpf",
    "MetricSpec",
    "MetricType",
    "NfsMount",
    "NfsServer",
    "ObjstoreEndpoint",
    "OptionType",
    "PluginContext",
    "PluginSpec",
    "ProblemLog",
    "ProgramSpec",
    "ProgramStats",
    "ProgramStatus",
    "Sample",
    "Support",
    "TargetDirectory",
    "Tracepoint",
    "Unreadable",
    "bucket_index",
    "cumulative_buckets",
    "device_names",
    "geometric_bounds",
    "grant_hint",
    "has_capability",
    "hookimpl",
    "normalize_address",
    "parse_device_table",
    "read_limited",
    "tracepoint_exists",
    "unescape_mount_field",
    "unreadable",
    "verify_only",
    "volume_id",
    "volume_pattern",
    "want_macro",
]
