"""The plugin host: discovering, validating and starting plugins and shared services.

We do not use pluggy's ``load_setuptools_entrypoints``: one plugin that fails to
import would abort it for all. Each entry point is loaded, registered and
validated inside its own error boundary, and the outcome is kept in a record
(:class:`PluginRecord`, :class:`ServiceRecord`) that ``plugins``, ``/`` and
the meta-metrics report.

The phases of a plugin, each with its own boundary: load (import the module,
call its hook), validate (the declaration), options (built from the
settings), check (the support check, with a deadline), start (factory and
``start()``), collect (:mod:`.runner`), stop.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, cast

import pluggy

from crusoe_metrics_exporter.contract import (
    CONTRACT_VERSION,
    Collector,
    ConfigOption,
    MetricSpec,
    PluginContext,
    PluginSpec,
    ServiceSpec,
    Support,
)
from crusoe_metrics_exporter.errors import ErrorCounters
from crusoe_metrics_exporter.hookspecs import PLUGIN_GROUP, PROJECT, SERVICE_GROUP, ExporterHooks
from crusoe_metrics_exporter.naming import InvalidDeclaration, validate_metric_spec
from crusoe_metrics_exporter.options import SettingError, parse_option
from crusoe_metrics_exporter.schema import InvalidOptions, config_options
from crusoe_metrics_exporter.services import ServiceRegistry
from crusoe_metrics_exporter.settings import Settings, apply_derivations, typed_options

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = PLUGIN_GROUP
OWN_DISTRIBUTION = "crusoe-metrics-exporter"
#: Metric names starting with this belong to the exporter itself (its own
#: metrics and those of shared services); plugins may not use it.
CORE_OWNED_PREFIX = "exporter_"

#: "loaded": discovered, not started yet; "starting": its start runs in the background;
#: "degraded": active, but its last collect had samples the core dropped.
State = Literal["starting", "active", "degraded", "unsupported", "disabled", "failed", "loaded"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class _Record:
    """What discovery learnt about one entry point, and what became of it."""

    kind: ClassVar[str] = "extension"

    name: str
    distribution: str
    version: str
    entry_point: str
    state: State = "loaded"
    reason: str = ""
    #: What to do about an unsupported state (from Support.fix); empty otherwise.
    fix: str = ""
    #: The phase a failure happened in (load, validate, start).
    failed_phase: str = ""
    #: The options object built from the settings (see :func:`build_options`).
    options: Any = None

    @property
    def builtin(self) -> bool:
        return self.distribution == OWN_DISTRIBUTION

    def fail(self, phase: str, reason: str, where: str = "") -> None:
        """Mark the record failed and say so in one warning line (``where``: file:line of the cause)."""
        self.state = "failed"
        self.failed_phase = phase
        self.reason = reason
        log.warning("%s %s failed to %s: %s%s", self.kind, self.name, phase, reason, f" (at {where})" if where else "")


@dataclass
class PluginRecord(_Record):
    """What the host knows about one discovered plugin."""

    kind: ClassVar[str] = "plugin"

    spec: PluginSpec[Any] | None = None
    details: dict[str, str] = field(default_factory=dict)
    collector: Collector | None = None
    errors: ErrorCounters | None = None
    #: Where the plugin runs: "in-process" (built-ins, [exporter] in_process) or "worker" (a process of its own).
    isolation: Literal["in-process", "worker"] = "in-process"
    #: The entry point object discovery found (loaded later, and only if the plugin is selected).
    entry: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "description": self.spec.description if self.spec is not None else "",
            "state": self.state,
            "reason": self.reason,
            "fix": self.fix,
            "failed_phase": self.failed_phase,
            "details": dict(self.details),
            "isolation": self.isolation,
        }


@dataclass
class ServiceRecord(_Record):
    """What the host knows about one discovered shared service."""

    kind: ClassVar[str] = "service"

    spec: ServiceSpec[Any] | None = None


# -- discovery ----------------------------------------------------------------
def _entry_points(group: str) -> list[tuple[Any, str, str]]:
    # Imported here: a worker process never scans distributions, and importlib.metadata costs it ~3 MiB.
    import importlib.metadata

    seen: set[tuple[str, str, str]] = set()
    out = []
    for dist in importlib.metadata.distributions():
        # entry_points.txt is a small file; METADATA is parsed (an email
        # parser, ~1 ms each) only for the few distributions that match.
        matching = [ep for ep in dist.entry_points if ep.group == group]
        if not matching:
            continue
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in matching:
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
    """List and load every plugin of ``group`` in this process; never raises for a plugin's fault.

    For tools and tests that want every declaration; the exporter itself
    lists (:func:`list_plugins`), selects, and then loads only what runs here
    (:func:`load`). ``entry_points`` (objects with ``name``, ``value`` and
    ``load()``, with their distribution name and version) replaces discovery.
    """
    plugins = list_plugins(entry_points, group)
    load(plugins)
    return plugins


def list_plugins(
    entry_points: Iterable[tuple[Any, str, str]] | None = None,
    group: str = ENTRY_POINT_GROUP,
) -> list[PluginRecord]:
    """One record per plugin entry point, from the installed metadata alone: nothing is imported.

    A plugin that is disabled, or runs in a worker process, is never
    imported into the exporter: its import could exit, hang or hog the
    interpreter (the trial's ``sys.exit()`` at import ended the exporter even
    for a disabled plugin).
    """
    plugins = []
    for rec, ep in _discover(PluginRecord, entry_points, group):
        rec.entry = ep
        plugins.append(rec)
    return plugins


def load(records: Iterable[PluginRecord], builtin_only: bool = False) -> None:
    """Import and validate the plugins that run in this process and are not disabled or failed.

    Each import runs under its own error boundary (any BaseException) and
    the deadline LOAD_TIMEOUT. Worker plugins are loaded by their worker;
    with ``builtin_only``, so are third-party plugins trusted to run in
    process: by their start, in the background (see :func:`start`).
    """
    records = list(records)
    for rec in records:
        if rec.spec is not None or rec.state in ("failed", "disabled") or rec.isolation == "worker":
            continue
        if builtin_only and not rec.builtin:
            continue
        rec.spec = _load(rec, rec.entry, "crusoe_metrics_exporter_plugin", validate_spec)
    _reject_duplicate_metrics(records)


def discover_services(
    entry_points: Iterable[tuple[Any, str, str]] | None = None,
    group: str = SERVICE_GROUP,
) -> list[ServiceRecord]:
    """Load every shared service of ``group``, each inside its own error boundary."""
    records = _discover(ServiceRecord, entry_points, group)
    for rec, ep in records:
        if rec.state != "failed":
            rec.spec = _load(rec, ep, "crusoe_metrics_exporter_service", validate_service_spec)
    return [rec for rec, _ in records]


_R = TypeVar("_R", bound=_Record)


def _discover(kind: type[_R], entry_points: Iterable[tuple[Any, str, str]] | None,
              group: str) -> list[tuple[_R, Any]]:
    """One record per entry point; a name claimed by several distributions fails all of them."""
    candidates = list(entry_points) if entry_points is not None else _entry_points(group)
    candidates.sort(key=lambda t: (t[0].name, t[1]))
    records: list[tuple[_R, Any]] = []
    by_name: dict[str, list[_R]] = {}
    for ep, dist_name, dist_version in candidates:
        rec = kind(name=ep.name, distribution=dist_name, version=dist_version, entry_point=ep.value)
        records.append((rec, ep))
        by_name.setdefault(ep.name, []).append(rec)
    for name, recs in by_name.items():
        if len(recs) > 1:
            dists = ", ".join(r.distribution for r in recs)
            for r in recs:
                r.fail("load", f"name {name!r} is claimed by several distributions: {dists}")
    return records


_S = TypeVar("_S")


def _load(rec: _Record, ep: Any, hook: str, validate: Callable[[object, str], _S]) -> _S | None:
    """Import the entry point's module, call its hook, validate the answer; failures become state."""
    outcome = _declared(rec, ep, hook, validate)
    if isinstance(outcome, LoadFailure):
        rec.fail(outcome.phase, outcome.reason, outcome.where)
        return None
    return outcome


@dataclass(frozen=True)
class LoadFailure:
    phase: str
    reason: str
    where: str = ""


def _declared(rec: _Record, ep: Any, hook: str, validate: Callable[[object, str], _S]) -> _S | LoadFailure:
    """The validated declaration of ``ep``, or why there is none; raises nothing for the extension's fault.

    The import and the hook run under the deadline LOAD_TIMEOUT, and any
    BaseException from them (``sys.exit()`` at import) is the extension's
    failure, never the exporter's exit.
    """
    if not _NAME.match(rec.name):
        return LoadFailure("load", f"entry point name {rec.name!r} is not a valid name (lowercase, digits, _)")
    try:
        declared = with_deadline(lambda: declaration(ep, rec.name, hook), LOAD_TIMEOUT, f"load-{rec.name}")
    except TimeoutError:
        return LoadFailure("load", f"its import did not finish within {LOAD_TIMEOUT:g}s")
    except Exception as exc:  # the extension's error boundary (PluginExit included): its failure becomes its state
        text, where = describe_failure(exc)
        log.debug("%s %s: traceback of the load failure", rec.kind, rec.name, exc_info=exc)
        return LoadFailure("load", text, where)
    try:
        return validate(declared, rec.name)
    except InvalidDeclaration as exc:
        return LoadFailure("validate", str(exc))


class NoHook(Exception):
    """The entry point's module does not implement the hook."""


def declaration(ep: Any, name: str, hook: str) -> object:
    """Import the entry point's module and call its hook; raises what they raise (or NoHook)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ExporterHooks)
    module = ep.load()
    pm.register(module, name=name)
    pm.check_pending()
    impls = getattr(pm.hook, hook).get_hookimpls()
    if not impls:
        raise NoHook(f"the module does not implement {hook}")
    return impls[0].function()


#: How long importing a plugin and calling its hook may take (in-process plugins: this blocks start-up).
LOAD_TIMEOUT = 20.0


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(``Type: message``, ``file:line`` where it was raised, or "").

    The frame is the innermost one outside the import machinery, so an import
    error points at the plugin's own import statement, not at importlib.
    """
    if isinstance(exc, PluginExit):
        exc = exc.original
    if isinstance(exc, NoHook):
        return str(exc), ""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen ")]
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno}"
    return f"{type(exc).__name__}: {exc}", where


def _fail_with(rec: _Record, phase: str, exc: BaseException, what: str = "") -> None:
    """Record a failure from an exception: one warning line with file:line, the traceback at debug."""
    text, where = describe_failure(exc)
    log.debug("%s %s: traceback of the %s failure", rec.kind, rec.name, phase, exc_info=exc)
    rec.fail(phase, what + text, where)


# -- validation -----------------------------------------------------------------
def validate_spec(spec: object, entry_point_name: str) -> PluginSpec[Any]:
    """Check a PluginSpec the way the core needs it; raise InvalidDeclaration."""
    if not isinstance(spec, PluginSpec):
        raise InvalidDeclaration(f"the hook returned {type(spec).__name__}, not a PluginSpec")
    _check_declaration(spec, entry_point_name, "plugin")
    for metric in spec.metrics:
        if metric.name.startswith(CORE_OWNED_PREFIX):
            raise InvalidDeclaration(f"metric {metric.name!r}: names starting {CORE_OWNED_PREFIX!r} belong to the "
                                     "exporter")
    if not callable(spec.factory) or not callable(spec.check_support):
        raise InvalidDeclaration("factory and check_support must be callables")
    return spec


def validate_service_spec(spec: object, entry_point_name: str) -> ServiceSpec[Any]:
    """Check a ServiceSpec the way the core needs it; raise InvalidDeclaration."""
    if not isinstance(spec, ServiceSpec):
        raise InvalidDeclaration(f"the hook returned {type(spec).__name__}, not a ServiceSpec")
    _check_declaration(spec, entry_point_name, "service")
    if spec.name in ("exporter", "plugins"):
        raise InvalidDeclaration(f"service name {spec.name!r} is reserved for the exporter's own tables")
    if not callable(spec.factory):
        raise InvalidDeclaration("factory must be a callable")
    return spec


def _check_declaration(spec: PluginSpec[Any] | ServiceSpec[Any], entry_point_name: str, kind: str) -> None:
    if spec.contract_version != CONTRACT_VERSION:
        raise InvalidDeclaration(
            f"written for plugin contract {spec.contract_version}; this exporter speaks {CONTRACT_VERSION}"
        )
    if spec.name != entry_point_name:
        raise InvalidDeclaration(f"entry point {entry_point_name!r} declares a {kind} named {spec.name!r}")
    names: set[str] = set()
    for metric in spec.metrics:
        validate_metric_spec(metric)
        if metric.name in names:
            raise InvalidDeclaration(f"metric {metric.name!r} declared twice")
        names.add(metric.name)
    try:
        options = config_options(spec.options)
    except InvalidOptions as exc:
        raise InvalidDeclaration(str(exc)) from None
    for option in options:
        if not _NAME.match(option.name):
            raise InvalidDeclaration(f"option {option.name!r}: invalid option name (lowercase, digits, _)")
        try:
            parse_option(option, option.default, f"default of option {option.name}")
        except SettingError as exc:
            raise InvalidDeclaration(str(exc)) from None


def _reject_duplicate_metrics(records: list[PluginRecord]) -> None:
    # Built-ins are claimed first so a third-party plugin cannot evict one;
    # among the rest, name order decides, so the outcome is reproducible.
    _claim_metrics(sorted(records, key=lambda r: (not r.builtin, r.name)), {})


def reject_service_metric_clashes(plugins: list[PluginRecord], services: list[ServiceRecord]) -> None:
    """A metric name a service exports fails a later service or a plugin that declares it too."""
    owners: dict[str, str] = {}
    _claim_metrics(services, owners)
    _claim_metrics(plugins, owners)


def _claim_metrics(records: Iterable[PluginRecord | ServiceRecord], owners: dict[str, str]) -> None:
    """In order, each record claims its metric names; one that names a claimed metric fails (validate)."""
    for rec in records:
        if rec.spec is None or rec.state == "failed":
            continue
        clash = next((m.name for m in rec.spec.metrics if m.name in owners), None)
        if clash is not None:
            rec.fail("validate", f"metric {clash!r} is already exported by {owners[clash]}")
            continue
        owners.update({m.name: f"{rec.kind} {rec.name!r}" for m in rec.spec.metrics})


class MetricClaims:
    """Metric names already taken, for plugins whose declaration arrives later (from a worker)."""

    def __init__(self, records: Iterable[PluginRecord | ServiceRecord]) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}
        for rec in records:
            if rec.spec is not None and rec.state != "failed":
                self._owners.update({m.name: f"{rec.kind} {rec.name!r}" for m in rec.spec.metrics})

    def claim(self, rec: PluginRecord, metrics: Iterable[MetricSpec]) -> str:
        """Take ``metrics`` for ``rec``; "" on success, else why not (one name is someone else's)."""
        metrics = list(metrics)
        with self._lock:
            mine = f"{rec.kind} {rec.name!r}"
            clash = next((m.name for m in metrics if self._owners.get(m.name, mine) != mine), None)
            if clash is not None:
                return f"metric {clash!r} is already exported by {self._owners[clash]}"
            self._owners.update({m.name: mine for m in metrics})
            return ""


# -- options and selection ------------------------------------------------------
def declared_options(records: Iterable[PluginRecord | ServiceRecord]) -> dict[str, tuple[ConfigOption, ...]]:
    """name -> the ConfigOptions its options class declares, for every record that loaded."""
    return {r.name: config_options(r.spec.options) for r in records if r.spec is not None}


def build_options(records: Iterable[PluginRecord | ServiceRecord], settings: Settings) -> None:
    """Build each record's options object from the settings.

    A value the options class refuses (OptionError) raises SettingError: bad
    configuration stops start-up. Any other exception is the extension's own
    bug and fails only that extension.
    """
    for rec in records:
        if rec.spec is None or rec.state == "failed":
            continue
        section = f"plugins.{rec.name}" if isinstance(rec, PluginRecord) else rec.name
        try:
            for warning in apply_derivations(settings, section, rec.spec.options):
                log.warning("%s", warning)
            rec.options = typed_options(settings, section, rec.spec.options)
        except SettingError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken options class fails its extension only
            _fail_with(rec, "validate", exc, "its options class raised ")


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
        raise SettingError(f"invalid {settings.spelling('exporter', 'enable')}={shown!r}: no installed plugin named "
                           f"{unknown[0]!r} (installed: {', '.join(sorted(installed)) or 'none'})")
    for name in sorted(disable - installed):
        log.warning("%s names no installed plugin %r; ignored", settings.spelling("exporter", "disable"), name)
    in_process = set(settings.core.get("in_process", []))
    for name in sorted(in_process - installed):
        log.warning("%s names no installed plugin %r; ignored", settings.spelling("exporter", "in_process"), name)
    for rec in records:
        if _installed(rec.entry) and not rec.builtin and rec.name not in in_process:
            # An installed third-party plugin: its own process (tests pass entry point stand-ins, which
            # only load in this one).
            rec.isolation = "worker"
        if rec.state == "failed":
            continue
        if rec.name in disable or (enable and rec.name not in enable):
            rec.state = "disabled"
            rec.reason = "disabled by configuration"


# -- support check, start, stop ---------------------------------------------------
def _installed(entry: object) -> bool:
    """An entry point of an installed distribution (tests hand the host stand-ins that only load in-process)."""
    if entry is None:
        return False
    import importlib.metadata

    return isinstance(entry, importlib.metadata.EntryPoint)


def make_context(rec: PluginRecord, settings: Settings, services: ServiceRegistry) -> PluginContext[Any]:
    assert rec.spec is not None
    if rec.errors is None:
        rec.errors = ErrorCounters(rec.name, tuple(m.name for m in rec.spec.metrics if m.error_counter))
    if rec.options is None:
        rec.options = typed_options(settings, f"plugins.{rec.name}", rec.spec.options)
    return PluginContext(
        plugin=rec.name,
        options=rec.options,
        host_proc=Path(settings.core["host_proc_path"]),
        errors=rec.errors,
        log=logging.getLogger(f"crusoe_metrics_exporter.plugins.{rec.name}"),
        details=rec.details,
        collect_timeout=float(settings.core["collect_timeout"]),
        host_root=Path(settings.core["host_root_path"]) if settings.core.get("host_root_path") else None,
        services=services,
    )


def check(rec: PluginRecord, settings: Settings, services: ServiceRegistry) -> Support | None:
    """Run the support check (``plugins``, ``doctor``); updates the record. Returns the answer, if any."""
    if rec.spec is None or rec.state in ("failed", "disabled"):
        return None
    answer = _support(rec, make_context(rec, settings, services))
    if isinstance(answer, tuple):
        rec.fail("start", *answer)
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


def _support(rec: PluginRecord, ctx: PluginContext[Any]) -> Support | tuple[str, str]:
    """The plugin's answer to its support check, or why there is none (reason, file:line)."""
    spec = rec.spec
    assert spec is not None
    try:
        # A third-party check may return anything: typed as object, checked below.
        support: object = with_deadline(lambda: spec.check_support(ctx), SUPPORT_CHECK_TIMEOUT,
                                        f"check-{rec.name}")
    except TimeoutError:
        return f"support check did not answer within {SUPPORT_CHECK_TIMEOUT:g}s", ""
    except Exception as exc:
        log.debug("plugin %s: traceback of the support check", rec.name, exc_info=True)
        text, where = describe_failure(exc)
        return f"support check raised {text}", where
    if not isinstance(support, Support):
        return f"support check returned {type(support).__name__}, not a Support", ""
    return support


#: A support check only looks at files and capabilities; one that blocks (a
#: FIFO or a hung mount where a file was expected) must not stop start-up,
#: ``plugins`` or ``doctor``.
SUPPORT_CHECK_TIMEOUT = 10.0

_T = TypeVar("_T")


class PluginExit(Exception):
    """Plugin code raised SystemExit, KeyboardInterrupt or another BaseException: its failure, never our exit."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


def with_deadline(func: Callable[[], _T], timeout: float, name: str) -> _T:
    """Run plugin code ``func`` on a daemon thread named ``name``; raise TimeoutError if it has not returned in time.

    What it raises is raised here; a BaseException that is not an Exception
    (``sys.exit()`` in a plugin) arrives as :class:`PluginExit`, so only the
    caller's own Ctrl-C can end the caller. A thread that never returns is
    left behind (Python cannot cancel it); it is a daemon, so it does not
    keep the process alive.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        error = box["error"]
        raise error if isinstance(error, Exception) else PluginExit(error)
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
    #: For failed: file:line of the frame that raised, if it was an exception.
    where: str = ""
    #: For failed: the phase (load, validate, options, start).
    phase: str = "start"


def start(rec: PluginRecord, settings: Settings, services: ServiceRegistry,
          claims: MetricClaims | None = None) -> Started:
    """Support check, factory and ``start()``; never raises for the plugin's fault.

    A worker plugin is loaded, checked and started in its worker process;
    ``claims`` then decides whether the metric names it declares are free.

    Only ``details`` and the error counters of the record change here (they
    are shown while the plugin starts); its state is the caller's to set, so
    a plugin never shows *active* before its collector exists.
    """
    if rec.isolation == "worker":
        from crusoe_metrics_exporter.isolation.supervisor import start_in_worker

        return start_in_worker(rec, settings, claims or MetricClaims([]))
    if rec.spec is None:
        failure = _load_late(rec, settings, claims or MetricClaims([]))
        if failure is not None:
            return failure
    assert rec.spec is not None
    ctx = make_context(rec, settings, services)
    answer = _support(rec, ctx)
    if isinstance(answer, tuple):
        reason, where = answer
        return Started("failed", reason, where=where)
    rec.details.update(answer.details)
    if not answer.supported:
        return Started("unsupported", answer.reason or "not supported on this host", fix=answer.fix)
    assert rec.errors is not None
    collector: Collector | None = None
    try:
        collector = rec.spec.factory(ctx)
        collector.start()
    except BaseException as exc:  # sys.exit() in start() fails the plugin, not the exporter
        rec.errors.core_failure("start")
        log.debug("plugin %s: traceback of the start failure", rec.name, exc_info=True)
        if collector is not None:
            stop_collector(rec.name, collector)
        text, where = describe_failure(exc)
        return Started("failed", text, where=where)
    return Started("active", collector=collector)


def _load_late(rec: PluginRecord, settings: Settings, claims: MetricClaims) -> Started | None:
    """Load a trusted third-party plugin on its start thread: its import cannot delay the server. None when loaded."""
    from crusoe_metrics_exporter.settings import resolve_plugin

    outcome = _declared(rec, rec.entry, "crusoe_metrics_exporter_plugin", validate_spec)
    if isinstance(outcome, LoadFailure):
        return Started("failed", outcome.reason, where=outcome.where, phase=outcome.phase)
    clash = claims.claim(rec, outcome.metrics)
    if clash:
        return Started("failed", clash, phase="validate")
    try:
        resolve_plugin(settings, rec.name, config_options(outcome.options))
        rec.options = typed_options(settings, f"plugins.{rec.name}", outcome.options)
    except SettingError as exc:
        return Started("failed", str(exc), phase="options")
    except Exception as exc:  # noqa: BLE001 - the options class's own code
        text, where = describe_failure(exc)
        return Started("failed", f"its options class raised {text}", where=where, phase="options")
    rec.spec = outcome
    return None


def stop(rec: PluginRecord) -> None:
    if rec.collector is not None:
        stop_collector(rec.name, rec.collector)
        rec.collector = None


def stop_collector(name: str, collector: Collector) -> None:
    """``collector.stop()``; a plugin that raises there is logged, never propagated."""
    try:
        collector.stop()
    except BaseException as exc:  # sys.exit() in stop() too
        log.warning("plugin %s raised while stopping: %s: %s", name, type(exc).__name__, exc)
        log.debug("plugin %s: traceback of the stop failure", name, exc_info=True)


def details_suffix(details: Mapping[str, str]) -> str:
    if not details:
        return ""
    return " (" + ", ".join(f"{k}={v}" for k, v in sorted(details.items())) + ")"
