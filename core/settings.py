"""Effective configuration: defaults < config file < environment < CLI flags.

Three kinds of tables:

* ``[exporter]`` - the core's own options (listen port, procfs root, ...).
* ``[<service>]`` - one table per shared service with the options it
  declares (``[targets]``: where the NFS servers and the object store are;
  ``[ebpf]``: the eBPF runtime).
* ``[plugins.<name>]`` - one table per plugin, with the options it declares.

Each resolved value remembers where it came from, for ``config show``.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.contract import ConfigOption
from crusoe_metrics_exporter.files import read_file
from crusoe_metrics_exporter.options import SettingError, parse_option, to_text
from crusoe_metrics_exporter.schema import Derived, OptionError, OptionWarning, build_options, config_options

#: log_level values -> logging levels.
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR, "fatal": logging.CRITICAL}

DEFAULT_CONFIG_PATH = Path("/etc/crusoe-metrics-exporter/config.toml")
CONFIG_ENV = "CRUSOE_EXPORTER_CONFIG"
#: A configuration file is a few KiB; beyond this it is not one.
CONFIG_FILE_LIMIT = 1024 * 1024
AUTO_HOST_PROC = "auto"

CORE_OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption("port", "int", 9500, "TCP port of the HTTP server.", env="PORT", minimum=1, maximum=65535),
    ConfigOption(
        "listen_address",
        "bind_address",
        "",
        "Address to bind; empty means every interface (the seed's ':PORT').",
        env="LISTEN_ADDRESS",
    ),
    ConfigOption(
        "host_proc_path",
        "path",
        AUTO_HOST_PROC,
        "Root of the host's /proc. 'auto' picks /host/proc when /host/proc/1/mounts exists, else /proc.",
        env="HOST_PROC_PATH",
    ),
    ConfigOption(
        "host_root_path",
        "path",
        "",
        "Where the host's / is mounted (node_exporter's --path.rootfs), e.g. /host/root mounted read-only with "
        "HostToContainer propagation; plugins reach the host's filesystems under it (ctx.host_root). Empty means "
        "HOST_PROC_PATH/1/root, which needs CAP_SYS_PTRACE from a container.",
        env="HOST_ROOT_PATH",
    ),
    ConfigOption(
        "log_level",
        "str",
        "info",
        "Log level.",
        env="LOG_LEVEL",
        choices=("debug", "info", "warn", "warning", "error", "fatal"),
    ),
    ConfigOption(
        "strict",
        "bool",
        False,
        "Exit non-zero when any plugin fails to load, validate or start.",
        env="CRUSOE_EXPORTER_STRICT",
    ),
    ConfigOption(
        "enable",
        "str_list",
        [],
        "Plugins to run; empty means every installed plugin.",
        env="CRUSOE_EXPORTER_ENABLE",
    ),
    ConfigOption("disable", "str_list", [], "Plugins never to run.", env="CRUSOE_EXPORTER_DISABLE"),
    ConfigOption(
        "state_dir",
        "path",
        "/var/lib/crusoe-metrics-exporter",
        "Directory the exporter owns; the eBPF runtime builds merged kernel-header trees here when the running "
        "kernel's own headers are not installed. Created mode 0700; one owned by another user or writable by "
        "group/others is refused (docs/ebpf.md).",
        env="CRUSOE_EXPORTER_STATE_DIR",
    ),
    ConfigOption(
        "web_config_file",
        "path",
        "",
        "Web configuration file (node_exporter's --web.config.file format, YAML): TLS, client certificates, "
        "basic auth users with bcrypt hashes, response headers, rate limit. Empty means plain HTTP without "
        "authentication. Reloaded when it or a file it names changes, and on SIGHUP.",
        env="CRUSOE_EXPORTER_WEB_CONFIG_FILE",
    ),
    ConfigOption(
        "max_connections",
        "int",
        1024,
        "Most HTTP connections open at once (also bounded by the open-file limit, which is raised to its hard "
        "limit at start). At the limit a new connection closes the one idle longest.",
        minimum=16,
        maximum=65536,
    ),
    ConfigOption(
        "collect_timeout",
        "duration",
        5.0,
        "How long one plugin's collect may take before the scrape goes on without it.",
        minimum=0.1,
        maximum=300.0,
    ),
    ConfigOption(
        "max_series_per_plugin",
        "int",
        160_000,
        "Series one plugin may export per scrape; beyond it samples are dropped and counted "
        "(plugin_invalid_samples_total reason series_limit) and the plugin shows degraded. The default fits "
        "1,000 NFS mounts with nconnect=16 (138k series).",
        minimum=1000,
        maximum=10_000_000,
    ),
    ConfigOption(
        "max_exposition_bytes",
        "int",
        32 * 1024 * 1024,
        "Size of one /metrics response at most (about; plugins' series are counted against it before rendering). "
        "Series that do not fit are dropped and counted (reason exposition_limit) and their plugin shows "
        "degraded; the exporter's own metrics always fit.",
        minimum=1024 * 1024,
        maximum=1024 * 1024 * 1024,
    ),
    ConfigOption(
        "start_timeout",
        "duration",
        120.0,
        "How long one plugin's start (support check, set-up, eBPF compile) may take; a plugin still starting "
        "then is failed with the reason and the exporter goes on without it.",
        minimum=1.0,
        maximum=3600.0,
    ),
    ConfigOption(
        "in_process",
        "str_list",
        [],
        "Third-party plugins trusted to run inside the exporter's own process. Every other plugin that is not "
        "built in runs in a worker process of its own, so its crash, hang, leak or busy loop costs only that "
        "plugin.",
        env="CRUSOE_EXPORTER_IN_PROCESS",
    ),
    ConfigOption(
        "worker_memory_mib",
        "int",
        64,
        "Memory a plugin's worker process may use of its own (MiB; what all workers share is not counted): "
        "beyond it the worker is stopped, the plugin failed with the reason, and restarted after a back-off.",
        minimum=32,
        maximum=4096,
    ),
    ConfigOption(
        "worker_max_threads",
        "int",
        32,
        "Threads a plugin's worker process may run; beyond it the worker is stopped and restarted after a "
        "back-off.",
        minimum=2,
        maximum=1024,
    ),
)

@dataclass
class Settings:
    """Resolved settings plus where each value came from."""

    core: dict[str, Any]
    #: Per shared service (its top-level table), the parsed values.
    services: dict[str, dict[str, Any]]
    plugins: dict[str, dict[str, Any]]
    sources: dict[str, str] = field(default_factory=dict)
    config_path: Path | None = None
    #: "section.key" -> how the user spelt the setting (``PORT``, ``--set plugins.x.y``,
    #: ``[plugins.x] y``), for one-line errors.
    spellings: dict[str, str] = field(default_factory=dict)
    #: Plugins whose options are not known yet (not imported; a worker reports them later): what the
    #: configuration says about each, kept as given until :func:`resolve_plugin` parses it.
    deferred: dict[str, _Given] = field(default_factory=dict)

    def plugin(self, name: str) -> dict[str, Any]:
        return self.plugins.get(name, {})

    def service(self, name: str) -> dict[str, Any]:
        return self.services.get(name, {})

    def spelling(self, section: str, key: str) -> str:
        return self.spellings.get(f"{section}.{key}", f"[{section}] {key}")


@dataclass(frozen=True)
class _Given:
    """A plugin's settings as given: its config file table, command-line values and the environment."""

    table: Mapping[str, Any]
    cli: Mapping[str, str]
    environ: Mapping[str, str]
    path: Path | None


@dataclass(frozen=True)
class Overrides:
    """Values given on the command line, as ``section.key`` -> text."""

    values: Mapping[str, str] = field(default_factory=dict)


def resolve(
    plugin_options: Mapping[str, Sequence[ConfigOption]],
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
    service_options: Mapping[str, Sequence[ConfigOption]] | None = None,
    *,
    deferred: Iterable[str] = (),
) -> tuple[Settings, list[str]]:
    """Build Settings. Returns the settings and warnings (unknown plugin tables).

    ``service_options`` are the shared services' options by service name,
    each the top-level table of that name. ``deferred`` names installed
    plugins whose options are not known yet: their tables and command-line
    values are kept as given (``settings.deferred``) for :func:`resolve_plugin`.
    Raises SettingError (one line) for any bad value or unknown key.
    """
    env = os.environ if environ is None else environ
    cli = dict((overrides or Overrides()).values)
    path = _pick_config_path(config_path, env)
    document = _read_toml(path) if path is not None else {}
    warnings: list[str] = []

    services = dict(service_options or {})
    later = set(deferred) - set(plugin_options)
    sections: dict[str, Sequence[ConfigOption]] = {"exporter": CORE_OPTIONS, **services}
    file_tables: dict[str, Mapping[str, Any]] = {}
    for key, table in document.items():
        if key == "exporter" or key in services:
            file_tables[key] = _as_table(table, key, path)
        elif key == "plugins":
            for plugin, ptable in _as_table(table, "plugins", path).items():
                if plugin in later:
                    file_tables[f"plugins.{plugin}"] = _as_table(ptable, f"plugins.{plugin}", path)
                    continue
                if plugin not in plugin_options:
                    warnings.append(f"config file {path}: [plugins.{plugin}] names no installed plugin; ignored")
                    continue
                file_tables[f"plugins.{plugin}"] = _as_table(ptable, f"plugins.{plugin}", path)
        else:
            expected = ", ".join(["exporter", *sorted(services), "plugins"])
            raise SettingError(f"config file {path}: unknown table [{key}]: expected one of {expected}")
    for plugin, options in plugin_options.items():
        sections[f"plugins.{plugin}"] = options

    given: dict[str, dict[str, str]] = {name: {} for name in later}
    for dotted, text in cli.items():
        section, _, key = dotted.rpartition(".")
        if section.removeprefix("plugins.") in later and section.startswith("plugins."):
            given[section.removeprefix("plugins.")][dotted] = text
            continue
        if section not in sections or key not in {o.name for o in sections[section]}:
            raise SettingError(f"unknown setting {dotted!r} on the command line")

    resolved: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    spellings: dict[str, str] = {}
    for section, options in sections.items():
        resolved[section] = _resolve_section(section, options, _Given(file_tables.get(section, {}), cli, env, path),
                                             sources, spellings)

    core = resolved.pop("exporter")
    # Path("") is the current directory: never what an operator meant.
    if not core["host_proc_path"]:
        where = spellings.get("exporter.host_proc_path", "[exporter] host_proc_path")
        raise SettingError(f"invalid {where}='': expected a file system path, or auto")
    if not core["state_dir"]:
        where = spellings.get("exporter.state_dir", "[exporter] state_dir")
        raise SettingError(f"invalid {where}='': expected a file system path")
    if core["host_proc_path"] == AUTO_HOST_PROC:
        core["host_proc_path"] = "/host/proc" if Path("/host/proc/1/mounts").exists() else "/proc"
        origin = sources["exporter.host_proc_path"]
        sources["exporter.host_proc_path"] = "auto-detected" if origin == "default" else f"{origin}, auto-detected"
    service_values = {name: resolved.pop(name) for name in services}
    plugins = {section.removeprefix("plugins."): values for section, values in resolved.items()}
    waiting = {name: _Given(dict(file_tables.get(f"plugins.{name}", {})), given[name], dict(env), path)
               for name in later}
    return Settings(core, service_values, plugins, sources, path, spellings, waiting), warnings


def _resolve_section(section: str, options: Sequence[ConfigOption], given: _Given, sources: dict[str, str],
                     spellings: dict[str, str]) -> dict[str, Any]:
    """One table's values: command line > environment > config file > default; raises SettingError."""
    table, cli, env, path = given.table, given.cli, given.environ, given.path
    known = {o.name for o in options}
    for key in table:
        if key not in known:
            accepted = ", ".join(sorted(known))
            raise SettingError(f"config file {path}: unknown key {key!r} in [{section}]: expected one of "
                               f"{accepted}")
    values: dict[str, Any] = {}
    for option in options:
        dotted = f"{section}.{option.name}"
        if dotted in cli:
            flagged = section == "exporter" and option.name in _FLAGS
            origin = _cli_flag(option.name) if flagged else f"--set {dotted}"
            values[option.name] = parse_option(option, cli[dotted], origin)
            sources[dotted] = "command line"
            spellings[dotted] = origin
        elif option.env and env.get(option.env, "").strip():
            # An empty variable counts as unset: manifests often declare
            # "value: ''" and the seed fell back to its default then.
            values[option.name] = parse_option(option, env[option.env], option.env)
            sources[dotted] = f"environment {option.env}"
            spellings[dotted] = option.env
        elif option.name in table:
            values[option.name] = parse_option(option, table[option.name], f"[{section}] {option.name}")
            sources[dotted] = f"config file {path}"
        else:
            values[option.name] = _copy_default(option.default)
            sources[dotted] = "default"
    return values


def resolve_plugin(settings: Settings, name: str, options: Sequence[ConfigOption]) -> dict[str, Any]:
    """Parse the deferred settings of plugin ``name`` now that its options are known; raises SettingError.

    The values go into ``settings.plugins`` (and their sources into ``settings.sources``) as if the
    plugin had been known when the settings were resolved.
    """
    given = settings.deferred.get(name, _Given({}, {}, {}, settings.config_path))
    section = f"plugins.{name}"
    for dotted in given.cli:
        key = dotted.rpartition(".")[2]
        if key not in {o.name for o in options}:
            raise SettingError(f"unknown setting {dotted!r} on the command line")
    values = _resolve_section(section, options, given, settings.sources, settings.spellings)
    settings.plugins[name] = values
    settings.deferred.pop(name, None)
    return values


def apply_derivations(settings: Settings, section: str, options_class: type[Any] | None) -> list[str]:
    """Apply what ``options_class.derive(values)`` derives to the section's values; returns warning lines."""
    derive = getattr(options_class, "derive", None)
    if derive is None:
        return []
    values = settings.plugin(section.removeprefix("plugins.")) if section.startswith("plugins.") else \
        settings.service(section)
    warnings = []
    for item in derive(dict(values)):
        if isinstance(item, Derived):
            values[item.option] = item.value
            origin = settings.sources.get(f"{section}.{item.source_option}", "default")
            settings.sources[f"{section}.{item.option}"] = f"derived from {item.source_option} ({origin})"
        elif isinstance(item, OptionWarning):
            warnings.append(f"{settings.spelling(section, item.option)}={values.get(item.option)!r} {item.message}")
    return warnings


def typed_options(settings: Settings, section: str, options_class: type[Any] | None) -> Any:
    """The options object of ``section`` (``plugins.x`` or a service name) built from its resolved values.

    Raises SettingError (one line naming the setting as the user spelt it)
    when the options class refuses a value with OptionError. Any other
    exception is the options class's own fault and propagates.
    """
    if section.startswith("plugins."):
        values = settings.plugin(section.removeprefix("plugins."))
    else:
        values = settings.service(section)
    try:
        return build_options(options_class, values)
    except OptionError as exc:
        declared = {o.name: o for o in config_options(options_class)}
        value = values.get(exc.option)
        shown = to_text(declared[exc.option], value) if exc.option in declared else str(value)
        raise SettingError(f"invalid {settings.spelling(section, exc.option)}={shown!r}: {exc.message}") from None


#: [exporter] options that have a flag of their own (see cli._common_options).
_FLAGS = frozenset({"port", "listen_address", "host_proc_path", "log_level", "strict", "enable", "disable",
                    "web_config_file"})
#: Flags spelt as node_exporter spells them.
_FLAG_SPELLING = {"web_config_file": "--web.config.file"}


def _cli_flag(name: str) -> str:
    return _FLAG_SPELLING.get(name, "--" + name.replace("_", "-"))


def _copy_default(value: Any) -> Any:
    # Defaults of list options are tuples in the options classes; resolved
    # values are lists, whatever their source.
    return list(value) if isinstance(value, (list, tuple)) else value


def _pick_config_path(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise SettingError(f"invalid --config={str(explicit)!r}: expected an existing TOML file")
        return explicit
    if env.get(CONFIG_ENV):
        p = Path(env[CONFIG_ENV])
        if not p.is_file():
            raise SettingError(f"invalid {CONFIG_ENV}={str(p)!r}: expected an existing TOML file")
        return p
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = read_file(path, CONFIG_FILE_LIMIT).decode("utf-8")
        return tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise SettingError(f"config file {path}: not UTF-8 text (invalid byte at offset {exc.start}); expected a "
                           "TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"config file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingError(f"config file {path}: cannot be read: {exc.strerror}") from None


def _as_table(value: Any, name: str, path: Path | None) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SettingError(f"config file {path}: [{name}] must be a table")
    return value


def all_sections(
    plugin_options: Mapping[str, Iterable[ConfigOption]],
    service_options: Mapping[str, Iterable[ConfigOption]] | None = None,
) -> dict[str, tuple[ConfigOption, ...]]:
    """Every section with its options, in the order ``config init`` writes them."""
    out: dict[str, tuple[ConfigOption, ...]] = {"exporter": CORE_OPTIONS}
    for service, options in sorted((service_options or {}).items()):
        out[service] = tuple(options)
    for plugin in sorted(plugin_options):
        out[f"plugins.{plugin}"] = tuple(plugin_options[plugin])
    return out
