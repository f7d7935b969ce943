"""The testing kit for plugin authors, shipped in the wheel and loaded by pytest.

Registered through the ``pytest11`` entry point, so in any project that has
crusoe-metrics-exporter installed, tests get the fixtures below without a
conftest. Everything runs through the same code paths as the exporter:
the declaration is validated by the host, options are resolved and parsed
by the settings machinery (``--set`` semantics), samples are checked by the
core's validation and rendered by its one renderer.

::

    from crusoe_metrics_exporter.testing import PluginHarness

    def test_uptime(tmp_path, proc_tree):
        proc = proc_tree({"uptime": "12.5 40.0\\n"})
        with PluginHarness(my_plugin, host_proc=proc) as harness:
            assert harness.value("uptime_seconds") == 12.5

Fixtures: ``plugin_harness`` (a factory; everything it builds is stopped at
teardown), ``proc_tree`` (a fake ``/proc`` from a dict of files).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crusoe_metrics_exporter.contract import (
    CONTRACT_VERSION,
    HistogramValue,
    PluginContext,
    PluginSpec,
    Sample,
    ServiceSpec,
    Support,
)
from crusoe_metrics_exporter.errors import ErrorCounters
from crusoe_metrics_exporter.hookspecs import hookimpl
from crusoe_metrics_exporter.options import SettingError, to_text
from crusoe_metrics_exporter.schema import config_options

T = TypeVar("T")

__all__ = [
    "ErrorCounters",
    "InvalidSamples",
    "PluginHarness",
    "SettingError",
    "StaticTargets",
    "check_declaration",
    "error_totals",
    "invalid_samples",
    "make_proc",
    "options_for",
    "plugin_harness",
    "proc_tree",
    "spec_of",
]


class InvalidSamples(AssertionError):
    """A collect produced samples the core drops; the message says which and why."""


@dataclass
class _EntryPoint:
    """Quacks like importlib.metadata.EntryPoint for the host's discovery."""

    name: str
    module: types.ModuleType
    value: str = "tests"

    def load(self) -> types.ModuleType:
        return self.module


def _as_module(plugin: object, hook: str) -> types.ModuleType:
    if isinstance(plugin, types.ModuleType):
        return plugin
    module = types.ModuleType(f"testing_{hook}")
    module.__dict__[hook] = hookimpl(lambda: plugin)
    return module


def spec_of(plugin: types.ModuleType | PluginSpec[Any]) -> PluginSpec[Any]:
    """The PluginSpec a plugin module declares (or the spec itself)."""
    if isinstance(plugin, PluginSpec):
        return plugin
    spec = plugin.crusoe_metrics_exporter_plugin()
    if not isinstance(spec, PluginSpec):
        raise AssertionError(f"{plugin.__name__}.crusoe_metrics_exporter_plugin() returned {spec!r}")
    return spec


def check_declaration(plugin: types.ModuleType | PluginSpec[Any]) -> PluginSpec[Any]:
    """Validate a plugin exactly as the exporter does at load time; AssertionError naming the rule it breaks.

    Checks the metric names and labels, help texts, histogram buckets, the
    option declarations and their defaults, and that a collection-error
    counter is declared.
    """
    from crusoe_metrics_exporter.host import validate_spec
    from crusoe_metrics_exporter.naming import InvalidDeclaration

    spec = spec_of(plugin)
    try:
        validate_spec(spec, spec.name)
    except InvalidDeclaration as exc:
        raise AssertionError(f"plugin {spec.name!r}: {exc}") from None
    if not any(m.error_counter for m in spec.metrics):
        raise AssertionError(f"plugin {spec.name!r}: declare a collection-error counter with MetricSpec.errors(...)")
    if spec.contract_version != CONTRACT_VERSION:
        raise AssertionError(f"plugin {spec.name!r}: contract {spec.contract_version}, exporter {CONTRACT_VERSION}")
    return spec


def options_for(
    options_class: type[T],
    values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """An options object resolved the way the exporter resolves a plugin's table.

    ``values`` are given as on the command line (text) or in their Python
    form; ``environ`` feeds the options' environment variables. A value the
    exporter would refuse raises ``SettingError`` with the exporter's message.
    """
    from crusoe_metrics_exporter.settings import Overrides, resolve, typed_options

    declared = {o.name: o for o in config_options(options_class)}
    overrides = {}
    for key, value in (values or {}).items():
        if key not in declared:
            raise KeyError(f"{options_class.__name__} declares no option {key!r}")
        overrides[f"plugins.options.{key}"] = value if isinstance(value, str) else to_text(declared[key], value)
    settings, _ = resolve({"options": tuple(declared.values())}, None, {"HOST_PROC_PATH": "/proc", **(environ or {})},
                          Overrides(overrides))
    options: T = typed_options(settings, "plugins.options", options_class)
    return options


def make_proc(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``files`` (path relative to /proc -> content) under ``root`` and return ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@dataclass
class StaticTargets:
    """A ``TargetsService`` with fixed answers, for plugins that use ``ctx.targets``."""

    nfs_server_list: tuple[Any, ...] = ()
    nfs_mount_list: tuple[Any, ...] = ()
    objstore_endpoint_list: tuple[Any, ...] = ()
    nfs_ports: tuple[int, ...] = (2049,)
    objstore_ports: tuple[int, ...] = (443, 80)
    objstore_fqdn: str = ""
    volume_pattern: Any = None
    subscribers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def objstore_configured(self) -> bool:
        return bool(self.objstore_fqdn or self.objstore_endpoint_list)

    def start(self) -> None:
        pass

    def nfs_servers(self) -> tuple[Any, ...]:
        return self.nfs_server_list

    def nfs_mounts(self) -> tuple[Any, ...]:
        return self.nfs_mount_list

    def objstore_endpoints(self) -> tuple[Any, ...]:
        return self.objstore_endpoint_list

    def subscribe(self, callback: Callable[[], None]) -> None:
        self.subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        if callback in self.subscribers:
            self.subscribers.remove(callback)

    def changed(self) -> None:
        """Tell subscribers the targets changed (as the discovery thread would)."""
        for callback in list(self.subscribers):
            callback()


@functools.cache
def _installed_services() -> list[tuple[Any, str, str]]:
    """The installed services' entry points, looked up once per test session (the lookup scans every dist)."""
    from crusoe_metrics_exporter.hookspecs import SERVICE_GROUP
    from crusoe_metrics_exporter.host import _entry_points

    return list(_entry_points(SERVICE_GROUP))


def error_totals(ctx: PluginContext[Any]) -> dict[str, int]:
    """The error counters of a context the kit built (``harness.context``), as the core keeps them."""
    errors = ctx.errors
    if not isinstance(errors, ErrorCounters):
        raise TypeError(f"the context of {ctx.plugin!r} was not built by the exporter or the kit")
    return errors.metric_totals()


def invalid_samples(plugin: types.ModuleType | PluginSpec[Any], samples: Iterable[Sample]) -> list[str]:
    """What the core would drop from ``samples`` and why, one line per (metric, reason); empty when all pass."""
    from crusoe_metrics_exporter.runner import validate

    spec = spec_of(plugin)
    _, rejections = validate(samples, {m.name: m for m in spec.metrics})
    return [f"{r.count} x {r.describe()}" for r in rejections.values()]


class PluginHarness:
    """One plugin run by the real host: support check, start, collect through validation, stop.

    ``options`` are the plugin's settings by name, in their Python form or as
    text (as after ``--set plugins.<name>.<option>=``); they are parsed and
    checked like the exporter's (SettingError on a bad value).
    ``environ`` is the environment the settings see (``HOST_PROC_PATH`` is
    set from ``host_proc``). ``services`` replaces shared services by name
    (``{"targets": StaticTargets(...)}``); the others are the installed ones.
    """

    def __init__(
        self,
        plugin: types.ModuleType | PluginSpec[Any],
        *,
        host_proc: Path | str = "/proc",
        options: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        services: Mapping[str, object] | None = None,
        exporter_options: Mapping[str, Any] | None = None,
        service_plugins: Iterable[types.ModuleType | ServiceSpec[Any]] | None = None,
    ) -> None:
        from crusoe_metrics_exporter.app import Exporter
        from crusoe_metrics_exporter.settings import Overrides

        self.spec = spec_of(plugin)
        name = self.spec.name
        declared = {o.name: o for o in config_options(self.spec.options)}
        overrides: dict[str, str] = {}
        for key, value in (options or {}).items():
            if key not in declared:
                raise KeyError(f"plugin {name!r} declares no option {key!r} (it has: {', '.join(declared) or 'none'})")
            overrides[f"plugins.{name}.{key}"] = value if isinstance(value, str) else to_text(declared[key], value)
        for key, value in (exporter_options or {}).items():
            overrides[f"exporter.{key}"] = str(value)
        env = {"HOST_PROC_PATH": str(host_proc), **(environ or {})}
        entry = (_EntryPoint(name, _as_module(plugin, "crusoe_metrics_exporter_plugin")), "tests", "0")
        service_entries = _installed_services()
        if service_plugins is not None:
            service_entries = []
            for svc in service_plugins:
                module = _as_module(svc, "crusoe_metrics_exporter_service")
                svc_name = svc.name if isinstance(svc, ServiceSpec) else module.crusoe_metrics_exporter_service().name
                service_entries.append((_EntryPoint(svc_name, module), "tests", "0"))
        self.exporter = Exporter.from_environment(None, Overrides(overrides), env, [entry], service_entries)
        self.exporter.load_trusted()
        for svc_name, instance in (services or {}).items():
            self.exporter.services.provide(svc_name, instance)
        [self.record] = self.exporter.records
        if self.record.state == "failed":
            raise AssertionError(f"plugin {name!r} failed to {self.record.failed_phase}: {self.record.reason}")
        self._context: PluginContext[Any] | None = None
        self.last_dropped: list[str] = []

    # -- the pieces ------------------------------------------------------------
    @property
    def context(self) -> PluginContext[Any]:
        """The context the host hands the plugin (for testing a collector class directly)."""
        if self._context is None:
            from crusoe_metrics_exporter.host import make_context

            self._context = make_context(self.record, self.exporter.settings, self.exporter.services)
        return self._context

    @property
    def options(self) -> Any:
        return self.context.options

    @property
    def errors(self) -> ErrorCounters:
        """The plugin's error counters as the core keeps them (``metric_totals()``, ``phase_totals()``)."""
        _ = self.context  # the host creates the counters with the context
        assert self.record.errors is not None
        return self.record.errors

    def error_total(self, metric: str | None = None) -> int:
        """The value of one declared error counter (the only one when ``metric`` is omitted)."""
        totals = self.errors.metric_totals()
        if metric is None:
            if len(totals) != 1:
                raise KeyError(f"the plugin declares {len(totals)} error counters; name one")
            return next(iter(totals.values()))
        return totals[metric]

    # -- the lifecycle -----------------------------------------------------------
    def check_support(self) -> Support:
        from crusoe_metrics_exporter.host import check

        support = check(self.record, self.exporter.settings, self.exporter.services)
        if support is None:
            raise AssertionError(f"support check of {self.spec.name!r} failed: {self.record.reason}")
        return support

    def start(self) -> PluginHarness:
        """Support check, factory and ``start()``; AssertionError when the plugin does not become active."""
        self.exporter.start()
        if self.record.state != "active":
            raise AssertionError(f"plugin {self.spec.name!r} is {self.record.state}: {self.record.reason}")
        return self

    def collect(self, allow_invalid: bool = False) -> list[Sample]:
        """One collect through the core's validation; InvalidSamples if any sample was dropped."""
        scrape = self.exporter.collect()
        result = self.exporter.runners[self.spec.name].last
        assert result is not None
        if not result.ok:
            raise AssertionError(f"collect of {self.spec.name!r} failed or timed out (see the log)")
        self.last_dropped = list(result.problems)
        if self.last_dropped and not allow_invalid:
            raise InvalidSamples(f"plugin {self.spec.name!r} produced {result.dropped} invalid samples: "
                                 + "; ".join(self.last_dropped))
        self._last_scrape = scrape
        return [s for samples in result.by_metric.values() for s in samples]

    def exposition(self, openmetrics: bool = False) -> str:
        """The whole exposition of one scrape (the plugin's metrics and the exporter's own), as text."""
        from crusoe_metrics_exporter.exposition import render

        self.collect()
        return render(self._last_scrape, openmetrics=openmetrics).decode()

    def value(self, metric: str, **labels: str) -> float | HistogramValue | None:
        """The value of one series after a fresh collect, or None when the series is absent."""
        spec = self.spec.metric(metric)
        wanted = tuple(labels.get(name) for name in spec.labels)
        unknown = set(labels) - set(spec.labels)
        if unknown:
            raise KeyError(f"metric {metric!r} has no label {sorted(unknown)[0]!r} (labels: {spec.labels})")
        for sample in self.collect():
            if sample.metric == metric and all(w is None or w == got for w, got in zip(wanted, sample.labels,
                                                                                        strict=True)):
                return sample.value
        return None

    def stop(self) -> None:
        self.exporter.stop()

    def __enter__(self) -> PluginHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- pytest fixtures ------------------------------------------------------------------
@pytest.fixture
def plugin_harness() -> Iterator[Callable[..., PluginHarness]]:
    """``plugin_harness(plugin, **kwargs)``: a :class:`PluginHarness`, stopped at teardown."""
    made: list[PluginHarness] = []

    def make(plugin: types.ModuleType | PluginSpec[Any], **kwargs: Any) -> PluginHarness:
        harness = PluginHarness(plugin, **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.stop()


@pytest.fixture
def proc_tree(tmp_path: Path) -> Callable[[Mapping[str, str | bytes]], Path]:
    """``proc_tree({"diskstats": "...", "1/mounts": "..."})``: a fake /proc under tmp_path."""
    counter = iter(range(1_000_000))

    def make(files: Mapping[str, str | bytes]) -> Path:
        return make_proc(tmp_path / f"proc{next(counter)}", files)

    return make

