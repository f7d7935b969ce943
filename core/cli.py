"""Command line: ``crusoe-metrics-exporter [serve|plugins|collect|config|doctor]``.

Bare ``crusoe-metrics-exporter`` serves, like the seed binary. Every setting
error ends the process with exit code 2 and one line naming the setting, the
value and what is accepted; no traceback reaches the user.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from crusoe_metrics_exporter import __version__, footprint
from crusoe_metrics_exporter.app import Exporter, StrictModeError
from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.settings import LOG_LEVELS, Overrides

log = logging.getLogger(__name__)

PROG = "crusoe-metrics-exporter"
#: How long shutdown waits for plugins to stop before the process exits anyway.
STOP_TIMEOUT = 1.5
F = TypeVar("F", bound=Callable[..., Any])

_LEVELS = LOG_LEVELS


class UsageFailure(click.ClickException):
    """Bad input: printed as one line ``crusoe-metrics-exporter: <message>``, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"{PROG}: {self.message}", err=True)


class RunFailure(UsageFailure):
    """The input was fine but running failed (port in use, strict mode): exit 1."""

    exit_code = 1


def _common_options(func: F) -> F:
    """Options accepted both before and after the subcommand name."""
    options = [
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML configuration file."),
        click.option("--port", help="HTTP port (env PORT)."),
        click.option("--listen-address", help="Address to bind; empty = all interfaces."),
        click.option("--host-proc-path", help="Root of the host's /proc (env HOST_PROC_PATH)."),
        click.option("--log-level", help="debug, info, warn, error or fatal (env LOG_LEVEL)."),
        click.option("--strict/--no-strict", default=None, help="Exit non-zero if any plugin fails."),
        click.option("--enable", "enable", help="Comma-separated plugins to run (default: all)."),
        click.option("--disable", "disable", help="Comma-separated plugins not to run."),
        click.option("--web.config.file", "web_config_file", metavar="PATH",
                     help="Web configuration file (TLS, basic auth), as node_exporter's."),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Set any option: exporter.KEY, a service's SECTION.KEY or plugins.NAME.KEY, "
                          "e.g. --set exporter.port=9600."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _merge(ctx: click.Context, /, kwargs: dict[str, Any]) -> None:
    store: dict[str, Any] = ctx.ensure_object(dict)
    for key, value in kwargs.items():
        if value is None or value == ():
            continue
        if key == "sets":
            store.setdefault("sets", []).extend(value)
        else:
            store[key] = value


def _overrides(store: dict[str, Any]) -> Overrides:
    values: dict[str, str] = {}
    for flag in ("port", "listen_address", "host_proc_path", "log_level", "enable", "disable", "web_config_file"):
        if flag in store:
            values[f"exporter.{flag}"] = str(store[flag])
    if "strict" in store:
        values["exporter.strict"] = "true" if store["strict"] else "false"
    for item in store.get("sets", []):
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UsageFailure(f"invalid --set {item!r}: expected SECTION.KEY=VALUE")
        values[key.strip()] = value
    return Overrides(values)


def _build(ctx: click.Context) -> Exporter:
    store: dict[str, Any] = ctx.ensure_object(dict)
    # The level as given on the command line or in LOG_LEVEL, before discovery:
    # a plugin that fails to import logs its traceback at debug level then.
    early = str(store.get("log_level") or os.environ.get("LOG_LEVEL", "")).strip().lower()
    if early in _LEVELS:
        _configure_logging(early)
    try:
        exporter = Exporter.from_environment(store.get("config_path"), _overrides(store))
    except SettingError as exc:
        raise UsageFailure(str(exc)) from None
    _configure_logging(exporter.settings.core["log_level"])
    return exporter


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(_LEVELS.get(level, logging.INFO))


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
@_common_options
@click.pass_context
def cli(ctx: click.Context, /, **kwargs: Any) -> None:
    """Prometheus exporter for disk, NFS and object-store behaviour of a cloud VM."""
    _merge(ctx, kwargs)
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve_cmd)


@cli.command("serve")
@_common_options
@click.pass_context
def serve_cmd(ctx: click.Context, /, **kwargs: Any) -> None:
    """Start plugins and serve /metrics (the default command)."""
    # Before any thread starts: each would otherwise get a malloc arena of its own.
    footprint.limit_malloc_arenas()
    from crusoe_metrics_exporter.web.config import WebConfig, WebConfigError, load
    from crusoe_metrics_exporter.web.server import CannotListen, serve

    _merge(ctx, kwargs)
    exporter = _build(ctx)
    web_config_file = exporter.settings.core["web_config_file"]
    try:
        web = load(Path(web_config_file)) if web_config_file else WebConfig()
    except WebConfigError as exc:
        raise UsageFailure(str(exc)) from None
    failure: RunFailure | None = None
    try:
        # A plugin that failed to load or validate is known before anything
        # listens; in strict mode that ends start-up here.
        exporter.raise_if_strict_failed()
        serve(exporter, exporter.settings.core["listen_address"], exporter.settings.core["port"], web)
    except StrictModeError as exc:
        failure = RunFailure(str(exc))
    except CannotListen as exc:
        failure = RunFailure(str(exc))
    finally:
        if not exporter.stop(timeout=STOP_TIMEOUT):
            log.warning("plugins did not stop within %gs; exiting anyway", STOP_TIMEOUT)
    _exit_despite_stuck_threads(failure)
    if failure is not None:
        raise failure


def _exit_despite_stuck_threads(failure: RunFailure | None) -> None:
    """End the process now if a thread a plugin started is stuck and not a daemon.

    Python joins such threads at exit, so one blocked in the kernel (a statfs
    on a dead NFS server) would keep the exporter from ever exiting after
    SIGTERM. The orderly part of the shutdown has run by now.
    """
    stuck = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    if not stuck:
        return
    log.warning("threads still running after shutdown (%s); exiting without waiting for them", ", ".join(stuck))
    if failure is not None:
        failure.show()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(failure.exit_code if failure is not None else 0)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--collect", "run_collect", is_flag=True,
              help="Start the plugins and run one collection first, so the states include 'degraded'.")
@_common_options
@click.pass_context
def plugins_cmd(ctx: click.Context, /, as_json: bool, run_collect: bool, **kwargs: Any) -> None:
    """List every discovered plugin with its state and reason (nothing is started without --collect)."""
    _merge(ctx, kwargs)
    exporter = _build(ctx)
    if run_collect:
        try:
            exporter.start()
            exporter.collect()
        except StrictModeError:
            pass  # reported below, with every plugin's state
        finally:
            exporter.stop()
    else:
        exporter.check_all()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in exporter.records], indent=2))
        return
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "STATE", "REASON / DETAILS")]
    for r in exporter.records:
        detail = r.reason or ", ".join(f"{k}={v}" for k, v in sorted(r.details.items()))
        if r.reason and r.fix:
            detail += f" (fix: {r.fix})"
        if len(detail) > 160 and not r.reason:
            detail = detail[:157] + "..."  # all of it: --json
        rows.append((r.name, r.distribution, r.version, r.state, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    if exporter.settings.core["strict"] and any(r.state == "failed" for r in exporter.records):
        raise RunFailure("strict mode: some plugins failed")


@cli.command("collect")
@click.option("--plugin", "only", multiple=True, help="Limit to this plugin (repeatable).")
@click.option("--duration", "duration_text", default="0s", metavar="DURATION", show_default=True,
              help="Watch this long before collecting (eBPF histograms count only what happens after they "
                   "attach), e.g. 30s; SIGINT or SIGTERM ends the wait early.")
@_common_options
@click.pass_context
def collect_cmd(ctx: click.Context, /, only: tuple[str, ...], duration_text: str, **kwargs: Any) -> None:
    """Run one collection and print it in Prometheus text format (textfile-collector ready)."""
    from crusoe_metrics_exporter.exposition import render
    from crusoe_metrics_exporter.options import parse_duration

    try:
        duration = parse_duration(duration_text)
    except ValueError:
        raise UsageFailure(f"invalid --duration={duration_text!r}: expected a duration such as 30s, 5m or 0s") \
            from None
    _merge(ctx, kwargs)
    exporter = _build(ctx)
    known = {r.name for r in exporter.records}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise UsageFailure(f"invalid --plugin={unknown[0]!r}: expected one of {', '.join(sorted(known))}")
    try:
        exporter.start(only=only or None)
        if duration > 0:
            _watch(duration)
        sys.stdout.buffer.write(render(exporter.collect(only=only or None)))
        sys.stdout.flush()
    except StrictModeError as exc:
        raise RunFailure(str(exc)) from None
    finally:
        exporter.stop()


def _watch(seconds: float) -> None:
    """Wait ``seconds`` on the main thread; SIGINT or SIGTERM ends the wait (and only the wait) early."""
    ended = threading.Event()

    def end(_signum: int, _frame: object) -> None:
        ended.set()

    previous = {sig: signal.signal(sig, end) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.info("collect: watching for %.0f s before collecting (SIGINT or SIGTERM collects at once)", seconds)
        ended.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@cli.group("config")
def config_group() -> None:
    """Write a starter configuration or show the effective one."""


@config_group.command("init")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@_common_options
@click.pass_context
def config_init_cmd(ctx: click.Context, /, path: Path | None, force: bool, **kwargs: Any) -> None:
    """Write a complete starter TOML with every option and its default."""
    from crusoe_metrics_exporter.configfile import starter_toml, write_atomically
    from crusoe_metrics_exporter.settings import DEFAULT_CONFIG_PATH

    _merge(ctx, kwargs)
    exporter = _build(ctx)
    exporter.declare_all()
    target = path or DEFAULT_CONFIG_PATH
    if target.exists() and not force:
        raise RunFailure(f"{target} exists; use --force to overwrite it")
    try:
        write_atomically(target, starter_toml(exporter))
    except OSError as exc:
        raise RunFailure(f"cannot write {target}: {exc.strerror or exc}") from None
    click.echo(f"wrote {target}")


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@click.pass_context
def config_show_cmd(ctx: click.Context, /, as_json: bool, **kwargs: Any) -> None:
    """Print the effective configuration and where each value came from."""
    from crusoe_metrics_exporter.configfile import effective_json, effective_toml

    _merge(ctx, kwargs)
    exporter = _build(ctx)
    exporter.declare_all()
    click.echo(effective_json(exporter) if as_json else effective_toml(exporter), nl=False)


@cli.command("doctor")
@_common_options
@click.pass_context
def doctor_cmd(ctx: click.Context, /, **kwargs: Any) -> None:
    """Check what each plugin needs and print a fix for every failure."""
    from crusoe_metrics_exporter.doctor import run_checks

    _merge(ctx, kwargs)
    exporter = _build(ctx)
    failures = 0
    for check in run_checks(exporter):
        mark = "ok  " if check.ok else "FAIL"
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok:
            failures += 1
            if check.fix:
                click.echo(f"       fix: {check.fix}")
    if failures:
        raise RunFailure(f"{failures} check(s) failed")


@cli.group("plugin")
def plugin_group() -> None:
    """Tools for plugin authors."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True,
              help="Directory the package folder is created in.")
def plugin_new_cmd(name: str, parent: Path) -> None:
    """Write a complete plugin package NAME: metrics, an option, a parser with a fixture, tests, README."""
    from crusoe_metrics_exporter import host
    from crusoe_metrics_exporter.scaffold import Names, ScaffoldError, write

    try:
        names = Names.of(name)
        taken = {r.name for r in host.discover()}
        if name in taken:
            raise ScaffoldError(f"invalid plugin name {name!r}: an installed plugin has it (installed: "
                                f"{', '.join(sorted(taken))})")
        root = write(names, parent)
    except ScaffoldError as exc:
        raise UsageFailure(str(exc)) from None
    except OSError as exc:
        raise RunFailure(f"cannot write into {parent}: {exc.strerror or exc}") from None
    click.echo(f"wrote {root}\n\nnext:\n  cd {root}\n  python -m pytest          # its own tests, with the "
               f"exporter's testing kit\n  pip install -e .\n  {PROG} plugins   # {name}: active")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cli.main(prog_name=PROG, standalone_mode=True)
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"{PROG}: unexpected error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
