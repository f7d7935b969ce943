"""The exporter: discovered plugins + settings + runners + meta-metrics."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.contract import MetricSpec, Sample
from crusoe_metrics_exporter.exposition import Scrape
from crusoe_metrics_exporter.host import PluginRecord, ServiceRecord, Started
from crusoe_metrics_exporter.lifecycle import StartTask, Startup
from crusoe_metrics_exporter.meta import META_METRICS, meta_samples
from crusoe_metrics_exporter.naming import PREFIX
from crusoe_metrics_exporter.problems import LogBudget
from crusoe_metrics_exporter.runner import CollectResult, PluginRunner, SampleGate
from crusoe_metrics_exporter.schema import config_options
from crusoe_metrics_exporter.services import ServiceRegistry
from crusoe_metrics_exporter.settings import Overrides, Settings, resolve, resolve_plugin

if TYPE_CHECKING:
    from crusoe_metrics_exporter.isolation.supervisor import Until

log = logging.getLogger(__name__)


class StrictModeError(RuntimeError):
    """Strict mode and at least one plugin failed."""


class ExpositionBudget:
    """Keeps one scrape's plugin series within ``[exporter] max_exposition_bytes``.

    Each metric group's rendered size is estimated before rendering (lines
    per sample times the longest of three sampled lines), so the limit holds
    for the text and the OpenMetrics renderer alike and nothing is rendered
    to be thrown away. A group that does not fit is left out whole, counted
    in its plugin's invalid samples (reason exposition_limit), and the
    plugin shows degraded. The exporter's own metrics are outside the budget:
    they say what was left out.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._dropped: dict[str, tuple[PluginRecord, int, str]] = {}

    def admit(self, rec: PluginRecord, spec: MetricSpec, samples: Sequence[Sample]) -> bool:
        size = estimated_bytes(spec, samples)
        if self.used + size <= self.limit:
            self.used += size
            return True
        _, count, first = self._dropped.get(rec.name, (rec, 0, spec.name))
        self._dropped[rec.name] = (rec, count + len(samples), first)
        return False

    def account(self, records: Iterable[PluginRecord]) -> None:
        for rec in records:
            if rec.name not in self._dropped and rec.state == "degraded" and rec.reason.startswith(LEFT_OUT_REASON):
                rec.state, rec.reason = "active", ""
        for rec, count, metric in self._dropped.values():
            if rec.errors is not None:
                rec.errors.invalid_sample("exposition_limit", count)
            if rec.state in ("active", "degraded"):
                rec.state = "degraded"
                rec.reason = (f"{LEFT_OUT_REASON} {count} series (from {metric} on): the exposition would exceed "
                              f"max_exposition_bytes={self.limit}")
            _EXPOSITION_LOG.warning("plugin %s: %d series left out of a scrape to keep it under "
                                    "max_exposition_bytes=%d (counted as reason exposition_limit)", rec.name,
                                    count, self.limit)


def estimated_bytes(spec: MetricSpec, samples: Sequence[Sample]) -> int:
    """About how many bytes the text format takes for ``samples`` of ``spec``."""
    histogram = spec.type == "histogram"
    lines = len(spec.buckets) + 3 if histogram else 1
    names = sum(len(n) + 4 for n in spec.labels) + (10 if histogram else 0)
    values = max(sum(len(v) for v in s.labels) for s in (samples[0], samples[len(samples) // 2], samples[-1]))
    per_line = len(PREFIX) + len(spec.name) + 8 + names + values + 26
    return len(samples) * lines * per_line + len(spec.help) + 2 * len(spec.name) + 40


_EXPOSITION_LOG = LogBudget(log, "exposition limit", burst=5, interval=300.0)
#: How the reason of a plugin degraded by the exposition limit starts.
LEFT_OUT_REASON = "the last scrape left out"


class Exporter:
    def __init__(self, records: list[PluginRecord], settings: Settings,
                 service_records: list[ServiceRecord] | None = None) -> None:
        """Raises SettingError when an option value is refused by its plugin's or service's options class."""
        self.records = records
        self.settings = settings
        self.service_records = list(service_records or [])
        host.reject_service_metric_clashes(records, self.service_records)
        host.build_options([*self.service_records, *records], settings)
        self.services = ServiceRegistry(self.service_records, settings)
        self.runners: dict[str, PluginRunner] = {}
        self._meta = SampleGate("exporter", META_METRICS)
        self.startup: Startup | None = None
        #: Metric names taken, for worker plugins whose declaration arrives when they start.
        self.claims = host.MetricClaims([*self.service_records, *records])
        # Guards runners and the state of a settling plugin against a concurrent scrape.
        self._lock = threading.Lock()
        host.select(records, settings)

    @classmethod
    def from_environment(
        cls,
        config_path: Path | None = None,
        overrides: Overrides | None = None,
        environ: Mapping[str, str] | None = None,
        entry_points: Iterable[tuple[Any, str, str]] | None = None,
        service_entry_points: Iterable[tuple[Any, str, str]] | None = None,
    ) -> Exporter:
        """Discover plugins and services and resolve settings (raises SettingError on bad input).

        Plugins are listed from their metadata first; only those selected to
        run in this process are imported, then their settings are resolved.
        A worker plugin's settings are resolved when its worker has told the
        declaration (a bad value then fails that plugin).
        """
        records = host.list_plugins(entry_points)
        service_records = host.discover_services(service_entry_points)
        service_options = host.declared_options(service_records)
        settings, warnings = resolve({}, config_path, environ, overrides, service_options=service_options,
                                     deferred=[r.name for r in records])
        host.select(records, settings)
        # Built-ins only: a third-party plugin is imported by its start, in the background (in a worker
        # unless trusted), so its import can neither stop nor delay the server.
        host.load(records, builtin_only=True)
        for rec in records:
            if rec.spec is not None and rec.state != "failed":
                resolve_plugin(settings, rec.name, config_options(rec.spec.options))
        for w in warnings:
            log.warning("%s", w)
        return cls(records, settings, service_records)

    # -- lifecycle -------------------------------------------------------
    def check_all(self) -> None:
        """Run support checks only (``plugins``, ``doctor``): nothing is started.

        A worker plugin is declared and checked in a worker that is stopped
        right after (all of them in parallel).
        """
        self.load_trusted()
        self.run_workers("check")
        for rec in self.records:
            if rec.isolation == "in-process":
                host.check(rec, self.settings, self.services)

    def declare_all(self) -> None:
        """Learn every selected plugin's declaration and settings (``config show``/``init``)."""
        self.load_trusted()
        self.run_workers("declare")

    def load_trusted(self) -> None:
        """Import now the third-party plugins trusted to run in this process (tools, tests).

        ``serve`` loads them on their start threads instead, so an import
        that hangs cannot delay the server. Raises SettingError for a value
        one of their options refuses, like a built-in's.
        """
        late = [r for r in self.records
                if r.isolation == "in-process" and r.spec is None and r.state not in ("failed", "disabled")]
        host.load(late)
        for rec in late:
            if rec.spec is None or rec.state == "failed":
                continue
            clash = self.claims.claim(rec, rec.spec.metrics)
            if clash:
                rec.fail("validate", clash)
                continue
            resolve_plugin(self.settings, rec.name, config_options(rec.spec.options))
        host.build_options(late, self.settings)

    def run_workers(self, until: Until) -> None:
        """Take every selected worker plugin through its worker ``until`` declared or checked; the workers stop."""
        from crusoe_metrics_exporter.isolation.supervisor import start_in_worker

        def run(rec: PluginRecord) -> None:
            outcome = start_in_worker(rec, self.settings, self.claims, until)
            if outcome.state == "failed":
                rec.fail(outcome.phase, outcome.reason, outcome.where)
            elif until == "check":
                rec.state, rec.reason, rec.fix = outcome.state, outcome.reason, outcome.fix

        threads = [threading.Thread(target=run, args=(rec,), name=f"{until}-{rec.name}", daemon=True)
                   for rec in self.records if rec.isolation == "worker" and rec.state not in ("failed", "disabled")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def begin_start(self, only: Iterable[str] | None = None,
                    on_settled: Callable[[PluginRecord], None] | None = None) -> Startup:
        """Start every selected plugin in the background, all in parallel; returns at once.

        Each plugin shows *starting* until its start settles; ``on_settled``
        is called (on the plugin's start thread) right after it did.
        """
        wanted = set(only) if only is not None else None
        tasks = []
        # Failures of load and validate were logged when they happened (host), one line each.
        for rec in self.records:
            if rec.state in ("failed", "disabled"):
                continue
            if wanted is not None and rec.name not in wanted:
                rec.state, rec.reason = "disabled", "not selected"
                continue
            rec.state, rec.reason = "starting", ""
            tasks.append(StartTask(rec, functools.partial(host.start, rec, self.settings, self.services,
                                                          self.claims),
                                   functools.partial(self._settle, on_settled=on_settled)))
        self.startup = Startup(tasks, timeout=float(self.settings.core["start_timeout"]))
        self.startup.launch()
        return self.startup

    def start(self, only: Iterable[str] | None = None) -> None:
        """Start the selected plugins and wait until every one settled (``collect``, tests, benchmarks).

        Raises StrictModeError in strict mode when a plugin failed.
        """
        self.begin_start(only).wait()
        self.raise_if_strict_failed()

    def raise_if_strict_failed(self) -> None:
        if not self.settings.core["strict"]:
            return
        failed = [r for r in self.records if r.state == "failed"]
        if failed:
            names = ", ".join(f"{r.name} ({r.reason})" for r in failed)
            raise StrictModeError(f"strict mode: plugins failed: {names}")

    def _settle(self, rec: PluginRecord, outcome: Started,
                on_settled: Callable[[PluginRecord], None] | None) -> None:
        with self._lock:
            if outcome.collector is not None:
                rec.collector = outcome.collector
                # The runner exists before the state says active: a scrape
                # never sees an active plugin it cannot collect.
                self.runners[rec.name] = PluginRunner(rec, int(self.settings.core["max_series_per_plugin"]))
                rec.state, rec.reason, rec.fix = "active", "", ""
            elif outcome.state == "unsupported":
                rec.state, rec.reason, rec.fix = "unsupported", outcome.reason, outcome.fix
            else:
                # Logged by fail(): one warning with the file:line of the cause.
                rec.fail(outcome.phase, outcome.reason, outcome.where)
        elapsed = time.monotonic() - (self.startup.began if self.startup is not None else time.monotonic())
        if rec.state == "active":
            log.info("plugin %s active after %.2fs%s", rec.name, elapsed, host.details_suffix(dict(rec.details)))
        elif rec.state == "unsupported":
            log.warning("plugin %s unsupported: %s", rec.name, rec.reason)
        if on_settled is not None:
            on_settled(rec)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop every plugin and service; False if that did not finish within ``timeout``.

        A start still running is abandoned (its collector is stopped when it
        returns). With a timeout, the stop runs on a daemon thread, so a
        plugin whose ``stop()`` hangs cannot hold up the caller.
        """
        if self.startup is not None:
            self.startup.abandon()
        if timeout is None:
            self._stop_all()
            return True
        thread = threading.Thread(target=self._stop_all, name="stop-plugins", daemon=True)
        thread.start()
        thread.join(timeout)
        return not thread.is_alive()

    def _stop_all(self) -> None:
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.close()
        for rec in self.records:
            host.stop(rec)
        self.services.stop()
        if any(rec.isolation == "worker" for rec in self.records):
            from crusoe_metrics_exporter.isolation.supervisor import stop_all

            stop_all()  # workers of starts still in progress

    # -- scraping --------------------------------------------------------
    def collect(self, only: Iterable[str] | None = None) -> Scrape:
        """One scrape: every runner in parallel, each bounded by collect_timeout."""
        wanted = set(only) if only is not None else None
        with self._lock:
            runners = [r for name, r in self.runners.items() if wanted is None or name in wanted]
        deadline = time.monotonic() + float(self.settings.core["collect_timeout"])
        futures = [(r, r.submit()) for r in runners]
        results: dict[str, CollectResult] = {}
        for runner, fut in futures:
            results[runner.record.name] = runner.wait(fut, deadline)
        scrape = Scrape()
        groups = scrape.groups
        budget = ExpositionBudget(int(self.settings.core["max_exposition_bytes"]))
        for rec in self.records:
            if wanted is not None and rec.name not in wanted:
                continue
            result = results.get(rec.name)
            if rec.spec is not None and result is not None:
                for spec in rec.spec.metrics:
                    samples = result.by_metric.get(spec.name)
                    if samples and budget.admit(rec, spec, samples):
                        groups.append((spec, samples))
            if rec.spec is not None and rec.errors is not None and rec.state in ("active", "degraded", "failed"):
                # The core owns these totals; they need no validation.
                totals = rec.errors.metric_totals()
                groups.extend((spec, [Sample(spec.name, (), float(totals[spec.name]))])
                              for spec in rec.spec.metrics if spec.error_counter)
        budget.account(self.records)
        groups.extend(self._meta.groups(meta_samples(self.records, results, wanted)))
        groups.extend(self.services.metric_groups())
        return scrape
