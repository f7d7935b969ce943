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
* the contract: :class:`PluginSpec`, :class:`MetricSpec`, :class:`Sample`,
  :class:`HistogramValue`, :class:`Support`, :class:`Collector`,
  :class:`PluginContext` (``ctx.options``, ``ctx.targets``, ``ctx.ebpf``,
  ``ctx.errors``, ``ctx.log``, ``ctx.details``), :data:`hookimpl`;
* options: :func:`option` declares a field of a plugin's frozen options
  dataclass as a setting; :class:`OptionError` refuses a value from
  ``__post_init__``;
* shared services: the interfaces :class:`TargetsService` and
  :class:`EbpfRuntime`; :class:`ServiceSpec` and :class:`ServiceContext` to
  write a service of one's own;
* files: every read of a kernel or user file goes through :func:`read_limited` (a
  record-based file such as /proc/diskstats, cut before the last whole record at a
  size limit), :func:`read_file` or :func:`read_text` (a small file, refused when
  larger than its limit): a FIFO, device node, directory or symlink loop put where
  a file belongs is an OSError naming it, never a hang or an unbounded read;
  :func:`open_char_device` opens a device node read by design (/dev/kmsg, an NVMe
  admin node) and refuses anything else in its place;
  :func:`unreadable` turns a permission error on a host file into the reason
  ("<path> is unreadable: needs CAP_...") and the fix, as :class:`Unreadable`;
* capabilities: :func:`has_capability` (``"CAP_SYS_ADMIN"`` in the effective set?) and
  :func:`grant_hint`, the one wording of how to grant one in each shipped artefact;
* logging: :class:`ProblemLog` logs a collector's trouble when it changes, not every scrape;
  :class:`LogBudget` caps per-target lines (thousands of endpoints failing at once) and logs the rest as a count;
* block devices: :class:`DeviceOptions` (node_exporter's device_include /
  device_exclude, for a plugin's options class to inherit), :class:`DeviceFilter`,
  :func:`device_names`;
* histograms: :func:`geometric_bounds`, :func:`bucket_index`, :func:`cumulative_buckets`;
* eBPF: :class:`BpfSpec`, :class:`ProgramSpec`, the attach candidates
  :class:`BtfTracepoint`, :class:`RawTracepoint`, :class:`Tracepoint`,
  :class:`Kprobe` and the BTF constants :class:`BtfOffset`, :class:`BtfEnum`
  declare an object; ``ctx.ebpf.load`` returns a :class:`LoadedBpf` with
  :class:`BpfMap` maps; :func:`tracepoint_exists` and :func:`tracepoint_has_field`
  say what the running kernel's tracepoints offer;
* target discovery: the records ``ctx.targets`` hands out, :class:`NfsServer`,
  :class:`NfsMount`, :class:`ObjstoreEndpoint`; :func:`volume_id` and friends.

The eBPF and target-discovery names are imported on first use, so a plugin
that needs neither does not pay for them. The testing kit for plugin
authors is :mod:`crusoe_metrics_exporter.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crusoe_metrics_exporter.capabilities import Unreadable, grant_hint, unreadable
from crusoe_metrics_exporter.capabilities import has as has_capability
from crusoe_metrics_exporter.contract import (
    CONTRACT_VERSION,
    EBPF_SERVICE,
    TARGETS_SERVICE,
    Collector,
    ConfigOption,
    DoctorCheck,
    ErrorReporter,
    HistogramValue,
    MetricSpec,
    MetricType,
    OptionType,
    PluginContext,
    PluginSpec,
    Sample,
    ServiceContext,
    ServiceSpec,
    Support,
)
from crusoe_metrics_exporter.devices import (
    DEFAULT_DEVICE_INCLUDE,
    DeviceFilter,
    DeviceOptions,
    device_names,
    parse_device_table,
)
from crusoe_metrics_exporter.files import (
    DEFAULT_READ_LIMIT,
    FileContent,
    open_char_device,
    read_file,
    read_limited,
    read_text,
)
from crusoe_metrics_exporter.histogram import bucket_index, cumulative_buckets, geometric_bounds
from crusoe_metrics_exporter.hookspecs import hookimpl
from crusoe_metrics_exporter.problems import LogBudget, ProblemLog
from crusoe_metrics_exporter.schema import NoOptions, OptionError, option
from crusoe_metrics_exporter.service_types import EbpfRuntime, TargetsService

if TYPE_CHECKING:
    from crusoe_metrics_exporter.ebpf import (
        AttachCandidate,
        AttachMethod,
        BpfMap,
        BpfSpec,
        BpfUnavailable,
        BtfEnum,
        BtfOffset,
        BtfTracepoint,
        KernelConstant,
        Kprobe,
        LoadedBpf,
        ProgramSpec,
        ProgramStats,
        ProgramStatus,
        RawTracepoint,
        Tracepoint,
        verify_only,
        want_macro,
    )
    from crusoe_metrics_exporter.ebpf.kernel import tracepoint_exists, tracepoint_has_field
    from crusoe_metrics_exporter.targets.addresses import normalize as normalize_address
    from crusoe_metrics_exporter.targets.model import NfsMount, NfsServer, ObjstoreEndpoint
    from crusoe_metrics_exporter.targets.mounts import unescape as unescape_mount_field
    from crusoe_metrics_exporter.targets.volumes import volume_id

#: name -> (module, attribute) for the parts imported on first use.
_LAZY: dict[str, tuple[str, str]] = {
    **{
        name: ("crusoe_metrics_exporter.ebpf", name)
        for name in (
            "AttachCandidate", "AttachMethod", "BpfMap", "BpfSpec", "BpfUnavailable", "BtfEnum", "BtfOffset",
            "BtfTracepoint", "KernelConstant", "Kprobe", "LoadedBpf", "ProgramSpec", "ProgramStats", "ProgramStatus",
            "RawTracepoint", "Tracepoint", "verify_only", "want_macro",
        )
    },
    "tracepoint_exists": ("crusoe_metrics_exporter.ebpf.kernel", "tracepoint_exists"),
    "tracepoint_has_field": ("crusoe_metrics_exporter.ebpf.kernel", "tracepoint_has_field"),
    "normalize_address": ("crusoe_metrics_exporter.targets.addresses", "normalize"),
    "NfsMount": ("crusoe_metrics_exporter.targets.model", "NfsMount"),
    "NfsServer": ("crusoe_metrics_exporter.targets.model", "NfsServer"),
    "ObjstoreEndpoint": ("crusoe_metrics_exporter.targets.model", "ObjstoreEndpoint"),
    "unescape_mount_field": ("crusoe_metrics_exporter.targets.mounts", "unescape"),
    "volume_id": ("crusoe_metrics_exporter.targets.volumes", "volume_id"),
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
    "EBPF_SERVICE",
    "TARGETS_SERVICE",
    "AttachCandidate",
    "AttachMethod",
    "BpfMap",
    "BpfSpec",
    "BpfUnavailable",
    "BtfEnum",
    "BtfOffset",
    "BtfTracepoint",
    "Collector",
    "ConfigOption",
    "DeviceFilter",
    "DeviceOptions",
    "DoctorCheck",
    "EbpfRuntime",
    "ErrorReporter",
    "FileContent",
    "HistogramValue",
    "KernelConstant",
    "Kprobe",
    "LoadedBpf",
    "LogBudget",
    "MetricSpec",
    "MetricType",
    "NfsMount",
    "NfsServer",
    "NoOptions",
    "ObjstoreEndpoint",
    "OptionError",
    "OptionType",
    "PluginContext",
    "PluginSpec",
    "ProblemLog",
    "ProgramSpec",
    "ProgramStats",
    "ProgramStatus",
    "RawTracepoint",
    "Sample",
    "ServiceContext",
    "ServiceSpec",
    "Support",
    "TargetsService",
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
    "open_char_device",
    "option",
    "parse_device_table",
    "read_file",
    "read_limited",
    "read_text",
    "tracepoint_exists",
    "tracepoint_has_field",
    "unescape_mount_field",
    "unreadable",
    "verify_only",
    "volume_id",
    "want_macro",
]
