"""Effective configuration: defaults < config file < environment < CLI flags.

Three kinds of tables:

* ``[exporter]`` - the core's own options (listen port, procfs root, ...).
* ``[targets]`` - where the NFS servers and the object store are; shared by
  every plugin that measures or probes them (the seed's ``NFS_*`` and
  ``OBJSTORE_*`` variables live here).
* ``[plugins.<name>]`` - one table per plugin, with the options it declares.

Each resolved value remembers where it came from, for ``config show``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.contract import ConfigOption
from crusoe_metrics_exporter.options import SettingError, parse_option

DEFAULT_CONFIG_PATH = Path("/etc/crusoe-metrics-exporter/config.toml")
CONFIG_ENV = "CRUSOE_EXPORTER_CONFIG"
AUTO_HOST_PROC = "auto"

CORE_OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption("port", "int", 9500, "TCP port of the HTTP server.", env="PORT"),
    ConfigOption(
        "listen_address",
        "host",
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
        "HostToContainer propagation; disk_usage runs statfs under it. Empty means HOST_PROC_PATH/1/root, "
        "which needs CAP_SYS_PTRACE from a container.",
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
        "kernel's own headers are not installed.",
        env="CRUSOE_EXPORTER_STATE_DIR",
    ),
    ConfigOption(
        "mount_tracefs",
        "bool",
        True,
        "Mount tracefs at /sys/kernel/tracing when it is not mounted (needs root); eBPF programs attach through it.",
        env="CRUSOE_EXPORTER_MOUNT_TRACEFS",
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
    ),
    ConfigOption(
        "collect_timeout",
        "duration",
        5.0,
        "How long one plugin's collect may take before the scrape goes on without it.",
        minimum=0.1,
    ),
)

TARGET_OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "nfs_server_ips",
        "host_list",
        [],
        "NFS servers (IPs or host names) in addition to those found in the host's mounts.",
        env="NFS_SERVER_IPS",
    ),
    ConfigOption("nfs_target_ports", "port_list", [2049], "NFS server ports.", env="NFS_TARGET_PORTS"),
    ConfigOption(
        "nfs_enable_volume_id",
        "bool",
        True,
        "Label NFS metrics with the volume id taken from the mount's device.",
        env="NFS_ENABLE_VOLUME_ID",
    ),
    ConfigOption(
        "nfs_volume_id_pattern",
        "regex",
        r"/volumes/(?P<volume_id>.+)$",
        "Regex with a named group 'volume_id' applied to an NFS mount's device.",
    ),
    ConfigOption(
        "nfs_mount_refresh_interval",
        "duration",
        30.0,
        "How often NFS mounts are re-scanned (on a background timer, never in a scrape).",
        env="NFS_MOUNT_REFRESH_INTERVAL",
    ),
    ConfigOption(
        "objstore_endpoint_fqdn",
        "host",
        "",
        "Object store host name; its A and AAAA records are the endpoints. When unset, it is derived from "
        "node_name: object.<region>.crusoecloudcompute.com.",
        env="OBJSTORE_ENDPOINT_FQDN",
    ),
    ConfigOption(
        "node_name",
        "str",
        "",
        "The Kubernetes node name (the DaemonSet passes spec.nodeName). Its second dot-separated part is the "
        "region the object-store FQDN is derived from when objstore_endpoint_fqdn is unset.",
        env="NODE_NAME",
    ),
    ConfigOption(
        "objstore_endpoint_ips",
        "ip_list",
        [],
        "Object store endpoint IPs, used when no FQDN is set or derived, and while the FQDN resolves to no "
        "address.",
        env="OBJSTORE_ENDPOINT_IPS",
    ),
    ConfigOption(
        "objstore_endpoint_ports",
        "port_list",
        [443, 80],
        "Object store ports.",
        env="OBJSTORE_ENDPOINT_PORT",
    ),
    ConfigOption(
        "objstore_refresh_interval",
        "duration",
        300.0,
        "How often the object store FQDN is re-resolved.",
    ),
)


@dataclass
class Settings:
    """Resolved settings plus where each value came from."""

    core: dict[str, Any]
    targets: dict[str, Any]
    plugins: dict[str, dict[str, Any]]
    sources: dict[str, str] = field(default_factory=dict)
    config_path: Path | None = None

    def plugin(self, name: str) -> dict[str, Any]:
        return self.plugins.get(name, {})


@dataclass(frozen=True)
class Overrides:
    """Values given on the command line, as ``section.key`` -> text."""

    values: Mapping[str, str] = field(default_factory=dict)


def resolve(
    plugin_options: Mapping[str, Sequence[ConfigOption]],
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
) -> tuple[Settings, list[str]]:
    """Build Settings. Returns the settings and warnings (unknown plugin tables).

    Raises SettingError (one line) for any bad value or unknown key.
    """
    env = os.environ if environ is None else environ
    cli = dict((overrides or Overrides()).values)
    path = _pick_config_path(config_path, env)
    document = _read_toml(path) if path is not None else {}
    warnings: list[str] = []

    sections: dict[str, Sequence[ConfigOption]] = {"exporter": CORE_OPTIONS, "targets": TARGET_OPTIONS}
    file_tables: dict[str, Mapping[str, Any]] = {}
    for key, table in document.items():
        if key in ("exporter", "targets"):
            file_tables[key] = _as_table(table, key, path)
        elif key == "plugins":
            for plugin, ptable in _as_table(table, "plugins", path).items():
                if plugin not in plugin_options:
                    warnings.append(f"config file {path}: [plugins.{plugin}] names no installed plugin; ignored")
                    continue
                file_tables[f"plugins.{plugin}"] = _as_table(ptable, f"plugins.{plugin}", path)
        else:
            raise SettingError(f"config file {path}: unknown table [{key}]: expected exporter, targets or plugins")
    for plugin, options in plugin_options.items():
        sections[f"plugins.{plugin}"] = options

    for dotted in cli:
        section, _, key = dotted.rpartition(".")
        if section not in sections or key not in {o.name for o in sections[section]}:
            raise SettingError(f"unknown setting {dotted!r} on the command line")

    resolved: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for section, options in sections.items():
        table = dict(file_tables.get(section, {}))
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
            elif option.env and env.get(option.env, "").strip():
                # An empty variable counts as unset: manifests often declare
                # "value: ''" and the seed fell back to its default then.
                values[option.name] = parse_option(option, env[option.env], option.env)
                sources[dotted] = f"environment {option.env}"
            elif option.name in table:
                values[option.name] = parse_option(option, table[option.name], f"[{section}] {option.name}")
                sources[dotted] = f"config file {path}"
            else:
                values[option.name] = _copy_default(option.default)
                sources[dotted] = "default"
        resolved[section] = values

    core = resolved.pop("exporter")
    if not core["host_proc_path"]:
        # Path("") is the current directory: never what an operator meant.
        origin = sources["exporter.host_proc_path"]
        where = "--host-proc-path" if origin == "command line" else "[exporter] host_proc_path"
        raise SettingError(f"invalid {where}='': expected a file system path, or auto")
    if core["host_proc_path"] == AUTO_HOST_PROC:
        core["host_proc_path"] = "/host/proc" if Path("/host/proc/1/mounts").exists() else "/proc"
        origin = sources["exporter.host_proc_path"]
        sources["exporter.host_proc_path"] = "auto-detected" if origin == "default" else f"{origin}, auto-detected"
    targets = resolved.pop("targets")
    if targets["nfs_enable_volume_id"]:
        # Checked here, not when a plugin starts, so a pattern without its
        # named group is one clear startup error shared by every NFS plugin.
        from crusoe_metrics_exporter.targets.volumes import compile_volume_pattern

        compile_volume_pattern(targets["nfs_volume_id_pattern"])
    _derive_objstore_fqdn(targets, sources, warnings)
    plugins = {section.removeprefix("plugins."): values for section, values in resolved.items()}
    return Settings(core, targets, plugins, sources, path), warnings


def _derive_objstore_fqdn(targets: dict[str, Any], sources: dict[str, str], warnings: list[str]) -> None:
    """Without an object-store FQDN, take it from the node name's region (the Go exporter's rule).

    A node name that yields no region is one warning, never a start-up
    failure: the exporter then uses OBJSTORE_ENDPOINT_IPS, if given.
    """
    if targets["objstore_endpoint_fqdn"] or not targets["node_name"].strip():
        return
    from crusoe_metrics_exporter.targets.region import NoRegion, objstore_endpoint, region_from_node_name

    try:
        fqdn = objstore_endpoint(region_from_node_name(targets["node_name"]))
    except NoRegion as exc:
        source = sources["targets.node_name"]
        where = source.removeprefix("environment ") if source.startswith("environment ") else "[targets] node_name"
        fallback = "OBJSTORE_ENDPOINT_IPS is used" if targets["objstore_endpoint_ips"] else "no object store is known"
        warnings.append(f"{where}={targets['node_name']!r} {exc}; no object-store FQDN derived ({fallback})")
        return
    targets["objstore_endpoint_fqdn"] = fqdn
    sources["targets.objstore_endpoint_fqdn"] = f"derived from node_name ({sources['targets.node_name']})"


#: [exporter] options that have a flag of their own (see cli._common_options).
_FLAGS = frozenset({"port", "listen_address", "host_proc_path", "log_level", "strict", "enable", "disable",
                    "web_config_file"})
#: Flags spelt as node_exporter spells them.
_FLAG_SPELLING = {"web_config_file": "--web.config.file"}


def _cli_flag(name: str) -> str:
    return _FLAG_SPELLING.get(name, "--" + name.replace("_", "-"))


def _copy_default(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


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
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"config file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingError(f"config file {path}: cannot be read: {exc.strerror}") from None


def _as_table(value: Any, name: str, path: Path | None) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SettingError(f"config file {path}: [{name}] must be a table")
    return value


def all_sections(plugin_options: Mapping[str, Iterable[ConfigOption]]) -> dict[str, tuple[ConfigOption, ...]]:
    """Every section with its options, in the order ``config init`` writes them."""
    out: dict[str, tuple[ConfigOption, ...]] = {"exporter": CORE_OPTIONS, "targets": TARGET_OPTIONS}
    for plugin in sorted(plugin_options):
        out[f"plugins.{plugin}"] = tuple(plugin_options[plugin])
    return out
