"""The plugin contract: what a collector plugin declares and what it hands back.

A plugin is described by one :class:`PluginSpec`. Everything the core needs to
know is in it *before* the plugin runs: its metrics, its options, how to check
whether this host supports it, and a factory for the object that collects.

Data flows one way: the plugin's collector yields :class:`Sample` records, the
core checks each one against the plugin's :class:`MetricSpec` declarations and
only then turns them into exposition. Plugins never touch prometheus_client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from crusoe_metrics_exporter.service_types import EbpfRuntime, TargetsService

MetricType = Literal["counter", "gauge", "histogram"]

#: Bumped when the contract changes incompatibly; the host refuses plugins
#: that were written against another major contract version.
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class MetricSpec:
    """One metric family a plugin may emit.

    ``name`` is the exposed name without the ``crusoe_vm_`` prefix, exactly as
    it will appear in ``/metrics`` (counters include their ``_total``).
    ``buckets`` are the finite upper bounds of a histogram in ascending order;
    the ``+Inf`` bucket is implicit.
    ``error_counter`` marks the plugin's cumulative collection-error counter:
    the core owns its value (see :class:`ErrorCounters`), so it survives a
    failed collect and can never go backwards.
    ``legacy_name`` says why the name breaks Prometheus' conventions and is
    kept anyway (a name the Go exporter fixed and dashboards use): such a
    counter may lack ``_total``, a gauge may end in it, a unit may not be a
    base unit. A counter without ``_total`` is exposed untyped (``unknown``
    in OpenMetrics) under exactly its name, since a counter family would
    force the suffix on it.
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    error_counter: bool = False
    legacy_name: str = ""

    @classmethod
    def errors(cls, name: str, help: str) -> MetricSpec:
        """Declare a collection-error counter owned by the core."""
        return cls(name=name, type="counter", help=help, error_counter=True)


class HistogramValue(NamedTuple):
    """A histogram as eBPF maps keep it: one count per bucket, not cumulative.

    ``counts`` has one entry per finite bound plus a final overflow entry
    (observations above the last finite bound, exported under ``+Inf``).
    ``sum`` is the exact sum of observations, in the metric's base unit.
    """

    counts: tuple[int, ...]
    sum: float


class Sample(NamedTuple):
    """One value of one series.

    ``labels`` are the label *values* in the order the MetricSpec declares
    its label names. Tuples keep the hot path cheap for plugins that emit
    tens of thousands of series (mountstats with nconnect lanes).
    """

    metric: str
    labels: tuple[str, ...]
    value: float | HistogramValue


@dataclass(frozen=True)
class Support:
    """Answer of a plugin's support check."""

    supported: bool
    reason: str = ""
    #: Extra facts shown by ``plugins`` and on ``/`` (e.g. the attach method).
    details: Mapping[str, str] = field(default_factory=dict)
    #: What the operator can do about it; printed by ``doctor``.
    fix: str = ""
    #: The host is fine; the plugin just has nothing to do until configured
    #: (no endpoint given). ``doctor`` does not count it as a failure.
    needs_configuration: bool = False

    @classmethod
    def ok(cls, **details: str) -> Support:
        return cls(True, "", details)

    @classmethod
    def unsupported(cls, reason: str, fix: str = "", **details: str) -> Support:
        return cls(False, reason, details, fix)

    @classmethod
    def unconfigured(cls, reason: str, fix: str = "", **details: str) -> Support:
        return cls(False, reason, details, fix, needs_configuration=True)


OptionType = Literal[
    "str", "int", "float", "bool", "duration", "path", "regex",
    "str_list", "int_list", "port_list", "hostname", "hostname_list", "ip_list", "bind_address",
]


@dataclass(frozen=True)
class ConfigOption:
    """A setting a plugin (or the core) accepts.

    ``default`` is in the option's native Python form (seconds as float for
    durations, lists for list types). ``env`` names an environment variable
    that sets it, for the seed's variables. ``choices`` limits str and int
    options (spelt as text); ``minimum`` and ``maximum`` bound int, float and duration
    options from below, so a value the plugin cannot use stops start-up.
    """

    name: str
    type: OptionType
    default: Any
    help: str
    env: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


@runtime_checkable
class Collector(Protocol):
    """What a plugin's factory returns. Built once; driven by the core.

    ``start`` does the expensive set-up (compile and attach eBPF, start
    background timers). ``collect`` must be cheap and must not do DNS or
    compilation; it returns the samples of one scrape. ``stop`` releases
    everything and must be safe to call after a failed ``start``.
    """

    def start(self) -> None: ...

    def collect(self) -> Iterable[Sample]: ...

    def stop(self) -> None: ...


class ErrorReporter(Protocol):
    """``ctx.errors``: count problems into the plugin's declared error counters."""

    def inc(self, metric: str | None = None, amount: int = 1) -> None:
        """Add ``amount`` to the error counter ``metric`` (optional when the plugin declares exactly one)."""


class ServiceLookup(Protocol):
    """Where a context finds shared services by name; use the typed accessors instead."""

    def get(self, name: str) -> object: ...


class _NoServices:
    def get(self, name: str) -> object:
        raise LookupError(f"no shared service named {name!r}: this context was built without services")


#: The options type of a plugin or service (a frozen dataclass; see ``schema.option``).
OptionsT = TypeVar("OptionsT")
#: The same, in a context that only hands the options out (a plugin written
#: against a Protocol of its options accepts any options class that has them).
OptionsT_co = TypeVar("OptionsT_co", covariant=True)
T = TypeVar("T")

#: The names the shared services are registered under.
TARGETS_SERVICE = "targets"
EBPF_SERVICE = "ebpf"

@dataclass(frozen=True)
class PluginContext(Generic[OptionsT_co]):
    """What the core hands a plugin: its typed options and the shared services.

    ``options`` is an instance of the plugin's options class, parsed and
    checked. ``host_proc`` is the machine's /proc as the exporter sees it
    (``/host/proc`` in a container). ``details`` are facts the plugin wants
    shown next to its state (attach method, paths).
    """

    plugin: str
    options: OptionsT_co
    host_proc: Path
    errors: ErrorReporter
    log: logging.Logger
    details: dict[str, str] = field(default_factory=dict)
    #: How long one collect may take before a scrape goes on without it.
    collect_timeout: float = 5.0
    #: Where the host's / is mounted (HOST_ROOT_PATH), or None when not set.
    host_root: Path | None = None
    services: ServiceLookup = field(default_factory=_NoServices)

    @property
    def targets(self) -> TargetsService:
        """Target discovery: the NFS servers, NFS mounts and object-store endpoints."""
        from crusoe_metrics_exporter.service_types import TargetsService

        value = self.services.get(TARGETS_SERVICE)
        if not isinstance(value, TargetsService):
            raise _wrong_kind(TARGETS_SERVICE, value, "TargetsService")
        return value

    @property
    def ebpf(self) -> EbpfRuntime:
        """The eBPF runtime: checks, loads and releases a plugin's eBPF object."""
        from crusoe_metrics_exporter.service_types import EbpfRuntime

        value = self.services.get(EBPF_SERVICE)
        if not isinstance(value, EbpfRuntime):
            raise _wrong_kind(EBPF_SERVICE, value, "EbpfRuntime")
        return value

    def service(self, name: str, kind: type[T]) -> T:
        """A third party's shared service ``name``, checked to be an instance of the class ``kind``.

        (For a runtime-checkable Protocol, call ``ctx.services.get(name)`` and
        check it with ``isinstance``: mypy refuses a Protocol where a class is
        expected.)
        """
        value = self.services.get(name)
        if not isinstance(value, kind):
            raise _wrong_kind(name, value, kind.__name__)
        return value


def _wrong_kind(name: str, value: object, expected: str) -> TypeError:
    return TypeError(f"shared service {name!r} is a {type(value).__name__}, not a {expected}")


@dataclass(frozen=True)
class PluginSpec(Generic[OptionsT]):
    """Everything the core needs to know about a plugin, declared up front.

    ``options`` is the plugin's options class (a frozen dataclass whose fields
    are declared with ``option(...)``), or None when it has no settings; the
    context's ``options`` is then an empty ``NoOptions``. The version shown
    for a plugin is its distribution's.
    """

    name: str
    description: str
    metrics: tuple[MetricSpec, ...]
    factory: Callable[[PluginContext[OptionsT]], Collector]
    check_support: Callable[[PluginContext[OptionsT]], Support]
    options: type[OptionsT] | None = None
    contract_version: int = CONTRACT_VERSION

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


class DoctorCheck(NamedTuple):
    """One line of ``doctor``: what was checked, whether it is fine, and what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class ServiceContext(Generic[OptionsT_co]):
    """What the core hands a shared service's factory."""

    name: str
    options: OptionsT_co
    host_proc: Path
    #: A directory the exporter owns (caches such as merged kernel headers).
    state_dir: Path
    log: logging.Logger


@dataclass(frozen=True)
class ServiceSpec(Generic[OptionsT]):
    """A shared service (target discovery, the eBPF runtime) offered to plugins.

    Registered like a plugin, through an entry point in the
    ``crusoe_metrics_exporter.services`` group whose module implements
    ``crusoe_metrics_exporter_service``. Its options form the top-level table
    ``[<name>]``. The service object is built on the first plugin's request
    and may have ``start()``/``stop()``, and ``collect() -> Iterable[Sample]``
    for its own ``metrics``, which the core validates and exposes like a
    plugin's. ``doctor`` adds host checks to ``crusoe-metrics-exporter doctor``.
    """

    name: str
    description: str
    factory: Callable[[ServiceContext[OptionsT]], object]
    options: type[OptionsT] | None = None
    metrics: tuple[MetricSpec, ...] = ()
    doctor: Callable[[ServiceContext[OptionsT]], Iterable[tuple[str, bool, str, str]]] | None = None
    contract_version: int = CONTRACT_VERSION
