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
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from crusoe_metrics_exporter.errors import ErrorCounters
    from crusoe_metrics_exporter.services import Services
    from crusoe_metrics_exporter.settings import Settings

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
    """

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    error_counter: bool = False

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
    "str_list", "int_list", "port_list", "host", "host_list", "ip_list",
]


@dataclass(frozen=True)
class ConfigOption:
    """A setting a plugin (or the core) accepts.

    ``default`` is in the option's native Python form (seconds as float for
    durations, lists for list types). ``env`` names an environment variable
    that sets it, for the seed's variables. ``choices`` limits str and int
    options (spelt as text); ``minimum`` bounds int, float and duration
    options from below, so a value the plugin cannot use stops start-up.
    """

    name: str
    type: OptionType
    default: Any
    help: str
    env: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None


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


def _no_services() -> Services:
    from crusoe_metrics_exporter.services import Services

    return Services(None, {})


@dataclass
class PluginContext:
    """What the core hands a plugin: its resolved options and shared services."""

    plugin: str
    options: Mapping[str, Any]
    settings: Settings
    errors: ErrorCounters
    log: logging.Logger
    #: Extra facts the running collector wants shown (attach method, paths).
    details: dict[str, str] = field(default_factory=dict)
    #: Shared services (target discovery, eBPF runtime): ``services.get(name)``.
    services: Services = field(default_factory=_no_services)

    @property
    def host_proc(self) -> Path:
        return Path(self.settings.core["host_proc_path"])

    @property
    def host_root(self) -> Path | None:
        """The host's / as configured (HOST_ROOT_PATH), or None when not set."""
        value = self.settings.core.get("host_root_path") or ""
        return Path(value) if value else None


@dataclass(frozen=True)
class PluginSpec:
    """Everything the core needs to know about a plugin, declared up front."""

    name: str
    version: str
    description: str
    metrics: tuple[MetricSpec, ...]
    factory: Callable[[PluginContext], Collector]
    check_support: Callable[[PluginContext], Support]
    options: tuple[ConfigOption, ...] = ()
    #: Whether the plugin runs eBPF programs (shown by ``plugins``/``doctor``).
    uses_ebpf: bool = False
    contract_version: int = CONTRACT_VERSION

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)
