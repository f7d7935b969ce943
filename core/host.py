"""Discovering, validating and starting plugins.

We do not use pluggy's ``load_setuptools_entrypoints``: one plugin that fails to
import would abort it for all. Each entry point is loaded, registered and
validated inside its own error boundary, and the outcome is kept in a
:class:`PluginRecord` that ``plugins``, ``/`` and the meta-metrics report.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import pluggy

from crusoe_metrics_exporter.contract import CONTRACT_VERSION, Collector, PluginContext, PluginSpec, Support
from crusoe_metrics_exporter.errors import ErrorCounters
from crusoe_metrics_exporter.hookspecs import PROJECT, ExporterHooks
from crusoe_metrics_exporter.naming import InvalidDeclaration, validate_metric_spec
from crusoe_metrics_exporter.options import SettingError, parse_option
from crusoe_metrics_exporter.services import Services
from crusoe_metrics_exporter.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = PROJECT
OWN_DISTRIBUTION = "crusoe-metrics-exporter"
#: Metric name prefixes the core itself emits; plugins may not use them.
CORE_OWNED_PREFIXES = ("exporter_", "dns_resolve_")

#: "loaded": discovered, not started yet; "starting": its start runs in the background.
State = Literal["starting", "active", "unsupported", "disabled", "failed", "loaded"]
_PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class PluginRecord:
    """What the host knows about one discovered plugin."""

    name: str
    distribution: str
    version: str
    entry_point: str
    spec: PluginSpec | None = None
    state: State = "loaded"
    reason: str = ""
    #: What to do about an unsupported state (from Support.fix); empty otherwise.
    fix: str = ""
    #: The phase a failure happened in (load, validate, start).
    failed_phase: str = ""
    details: dict[str, str] = field(default_factory=dict)
    collector: Collector | None = None
    errors: ErrorCounters | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution == OWN_DISTRIBUTION

    def fail(self, phase: str, reason: str) -> None:
        self.state = "failed"
        self.failed_phase = phase
        self.reason = reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "fix": self.fix,
            "failed_phase": self.failed_phase,
            "details": dict(self.details),
        }


def _entry_points(group: str) -> list[tuple[importlib.metadata.EntryPoint, str, str]]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            # The same dist can be visible twice (symlinked lib64, editable
            # installs); identical triples are one plugin, not a collision.
            key = (dist_name.lower().replace("_", "-"), ep.name, ep.value)
            if key in seen:
                continue
            seen.add(key)
            out.append((ep, dist_name, dist.version or "0"))
    out.sort(key=lambda t: (t[0].name, t[1]))
    return out


def discover(
    entry_points: Iterable[tuple[Any, str, str]] | None = None,
    group: str = ENTRY_POINT_GROUP,
) -> list[PluginRecord]:
    """Load every plugin of ``group``; never raises for a plugin's fault.

    ``entry_points`` (objects with ``name``, ``value`` and ``load()``, with their
    distribution name and version) replaces discovery in tests.
    """
    candidates = list(entry_points) if entry_points is not None else _entry_points(group)
    candidates.sort(key=lambda t: (t[0].name, t[1]))
    records: list[PluginRecord] = []
    by_name: dict[str, list[PluginRecord]] = {}
    for ep, dist_name, dist_version in candidates:
        rec = PluginRecord(name=ep.name, distribution=dist_name, version=dist_version, entry_point=ep.value)
        records.append(rec)
        by_name.setdefault(ep.name, []).append(rec)
        _load_one(rec, ep)

    for name, recs in by_name.items():
        if len(recs) > 1:
            dists = ", ".join(r.distribution for r in recs)
            for r in recs:
                r.fail("load", f"plugin name {name!r} is claimed by several distributions: {dists}")
    _reject_duplicate_metrics(records)
    return records


def _load_one(rec: PluginRecord, ep: Any) -> None:
    if not _PLUGIN_NAME.match(rec.name):
        rec.fail("load", f"entry point name {rec.name!r} is not a valid plugin name (lowercase, digits, _)")
        return
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ExporterHooks)
    try:
        module = ep.load()
        pm.register(module, name=rec.name)
        pm.check_pending()
        impls = pm.hook.crusoe_metrics_exporter_plugin.get_hookimpls()
        if not impls:
            rec.fail("load", "the module does not implement crusoe_metrics_exporter_plugin")
            return
        spec = impls[0].function()
    except Exception as exc:
        log.debug("plugin %s failed to load", rec.name, exc_info=True)
        rec.fail("load", f"{type(exc).__name__}: {exc}")
        return
    try:
        rec.spec = validate_spec(spec, rec.name)
    except InvalidDeclaration as exc:
        rec.fail("validate", str(exc))


def validate_spec(spec: object, entry_point_name: str) -> PluginSpec:
    """Check a PluginSpec the way the core needs it; raise InvalidDeclaration."""
    if not isinstance(spec, PluginSpec):
        raise InvalidDeclaration(f"the hook returned {type(spec).__name__}, not a PluginSpec")
    if spec.contract_version != CONTRACT_VERSION:
        raise InvalidDeclaration(
            f"written for plugin contract {spec.contract_version}; this exporter speaks {CONTRACT_VERSION}"
        )
    if spec.name != entry_point_name:
        raise InvalidDeclaration(f"entry point {entry_point_name!r} declares a plugin named {spec.name!r}")
    names: set[str] = set()
    for metric in spec.metrics:
        validate_metric_spec(metric)
        if metric.name.startswith(CORE_OWNED_PREFIXES):
            raise InvalidDeclaration(f"metric {metric.name!r}: names starting {CORE_OWNED_PREFIXES} belong to the core")
        if metric.name in names:
            raise InvalidDeclaration(f"metric {metric.name!r} declared twice")
        names.add(metric.name)
    option_names: set[str] = set()
    for option in spec.options:
        if not _PLUGIN_NAME.match(option.name) or option.name in option_names:
            raise InvalidDeclaration(f"option {option.name!r}: invalid or duplicate option name")
        option_names.add(option.name)
        try:
            parse_option(option, option.default, f"default of option {option.name}")
        except SettingError as exc:
            raise InvalidDeclaration(str(exc)) from None
    if not callable(spec.factory) or not callable(spec.check_support):
        raise InvalidDeclaration("factory and check_support must be callables")
    return spec


def _reject_duplicate_metrics(records: list[PluginRecord]) -> None:
    # Built-ins are claimed first so a third-party plugin cannot evict one;
    # among the rest, name order decides, so the outcome is reproducible.
    owners: dict[str, str] = {}
    for rec in sorted(records, key=lambda r: (not r.builtin, r.name)):
        if rec.spec is None or rec.state == "failed":
            continue
        clash = next((m.name for m in rec.spec.metrics if m.name in owners), None)
        if clash is not None:
            rec.fail("validate", f"metric {clash!r} is already exported by plugin {owners[clash]!r}")
            continue
        for m in rec.spec.metrics:
            owners[m.name] = rec.name


def _origin(settings: Settings, option: str) -> str:
    """How the user spelt the setting ``[exporter] option`` (for one-line errors)."""
    source = settings.sources.get(f"exporter.{option}", "")
    if source.startswith("environment "):
        return source.removeprefix("environment ")
    if source == "command line":
        return f"--{option}"
    return f"[exporter] {option}"


def plugin_options(records: Iterable[PluginRecord]) -> dict[str, Any]:
    return {r.name: r.spec.options for r in records if r.spec is not None}


def select(records: Iterable[PluginRecord], settings: Settings) -> None:
    """Mark plugins the configuration turns off.

    Raises SettingError when ``enable`` names a plugin that is not installed:
    a typo there would otherwise switch every plugin off without a word.
    Unknown names in ``disable`` only warn (a shared configuration may turn
    off a plugin some hosts do not have).
    """
    records = list(records)
    installed = {r.name for r in records}
    enable = set(settings.core["enable"])
    disable = set(settings.core["disable"])
    unknown = [name for name in settings.core["enable"] if name not in installed]
    if unknown:
        shown = ",".join(settings.core["enable"])
        raise SettingError(f"invalid {_origin(settings, 'enable')}={shown!r}: no installed plugin named "
                           f"{unknown[0]!r} (installed: {', '.join(sorted(installed)) or 'none'})")
    for name in sorted(disable - installed):
        log.warning("%s names no installed plugin %r; ignored", _origin(settings, "disable"), name)
    for rec in records:
        if rec.state == "failed":
            continue
        if rec.name in disable or (enable and rec.name not in enable):
            rec.state = "disabled"
            rec.reason = "disabled by configuration"


def make_context(rec: PluginRecord, settings: Settings, services: Services) -> PluginContext:
    assert rec.spec is not None
    if rec.errors is None:
        rec.errors = ErrorCounters(rec.name, tuple(m.name for m in rec.spec.metrics if m.error_counter))
    return PluginContext(
        plugin=rec.name,
        options=settings.plugin(rec.name),
        settings=settings,
        errors=rec.errors,
        log=logging.getLogger(f"crusoe_metrics_exporter.plugins.{rec.name}"),
        details=rec.details,
        services=services,
    )


def check(rec: PluginRecord, settings: Settings, services: Services) -> Support | None:
    """Run the support check (``plugins``, ``doctor``); updates the record. Returns the answer, if any."""
    if rec.spec is None or rec.state in ("failed", "disabled"):
        return None
    answer = _support(rec, make_context(rec, settings, services))
    if isinstance(answer, str):
        rec.fail("start", answer)
        return None
    rec.details.update(answer.details)
    if not answer.supported:
        rec.state = "unsupported"
        rec.reason = answer.reason or "not supported on this host"
        rec.fix = answer.fix
    else:
        rec.state = "active"
        rec.fix = ""
    return answer


def _support(rec: PluginRecord, ctx: PluginContext) -> Support | str:
    """The plugin's answer to its support check, or why there is none."""
    spec = rec.spec
    assert spec is not None
    try:
        # A third-party check may return anything: typed as object, checked below.
        support: object = _with_deadline(lambda: spec.check_support(ctx), SUPPORT_CHECK_TIMEOUT)
    except TimeoutError:
        return f"support check did not answer within {SUPPORT_CHECK_TIMEOUT:g}s"
    except Exception as exc:
        log.debug("support check of %s raised", rec.name, exc_info=True)
        return f"support check raised {type(exc).__name__}: {exc}"
    if not isinstance(support, Support):
        return f"support check returned {type(support).__name__}, not a Support"
    return support


#: A support check only looks at files and capabilities; one that blocks (a
#: FIFO or a hung mount where a file was expected) must not stop start-up,
#: ``plugins`` or ``doctor``.
SUPPORT_CHECK_TIMEOUT = 10.0

_T = TypeVar("_T")


def _with_deadline(func: Callable[[], _T], timeout: float) -> _T:
    """Run ``func`` on a daemon thread; raise TimeoutError if it has not returned in time.

    A thread that never returns is left behind (Python cannot cancel it); it
    is a daemon, so it does not keep the process alive.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = func()
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="support-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise RuntimeError("ended without an answer")
    return cast(_T, box["value"])


@dataclass(frozen=True)
class Started:
    """What starting one plugin came to; the caller applies it to the record when the start settles."""

    state: Literal["active", "unsupported", "failed"]
    reason: str = ""
    collector: Collector | None = None
    #: For unsupported: what to do about it (Support.fix).
    fix: str = ""


def start(rec: PluginRecord, settings: Settings, services: Services) -> Started:
    """Support check, factory and ``start()``; never raises for the plugin's fault.

    Only ``details`` and the error counters of the record change here (they
    are shown while the plugin starts); its state is the caller's to set, so
    a plugin never shows *active* before its collector exists.
    """
    assert rec.spec is not None
    ctx = make_context(rec, settings, services)
    answer = _support(rec, ctx)
    if isinstance(answer, str):
        return Started("failed", answer)
    rec.details.update(answer.details)
    if not answer.supported:
        return Started("unsupported", answer.reason or "not supported on this host", fix=answer.fix)
    assert rec.errors is not None
    collector: Collector | None = None
    try:
        collector = rec.spec.factory(ctx)
        collector.start()
    except Exception as exc:
        log.debug("plugin %s failed to start", rec.name, exc_info=True)
        rec.errors.core_failure("start")
        if collector is not None:
            stop_collector(rec.name, collector)
        return Started("failed", f"{type(exc).__name__}: {exc}")
    return Started("active", collector=collector)


def stop(rec: PluginRecord) -> None:
    if rec.collector is not None:
        stop_collector(rec.name, rec.collector)
        rec.collector = None


def stop_collector(name: str, collector: Collector) -> None:
    """``collector.stop()``; a plugin that raises there is logged, never propagated."""
    try:
        collector.stop()
    except Exception:
        log.warning("plugin %s raised while stopping", name, exc_info=True)


def details_suffix(details: Mapping[str, str]) -> str:
    if not details:
        return ""
    return " (" + ", ".join(f"{k}={v}" for k, v in sorted(details.items())) + ")"
