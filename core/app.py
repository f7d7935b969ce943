"""The exporter: discovered plugins + settings + runners + meta-metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample as PromSample

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.exposition import Scrape
from crusoe_metrics_exporter.host import PluginRecord
from crusoe_metrics_exporter.meta import meta_families
from crusoe_metrics_exporter.naming import PREFIX
from crusoe_metrics_exporter.runner import CollectResult, PluginRunner
from crusoe_metrics_exporter.services import Services
from crusoe_metrics_exporter.settings import Overrides, Settings, resolve

log = logging.getLogger(__name__)


class StrictModeError(RuntimeError):
    """Strict mode and at least one plugin failed."""


class Exporter:
    def __init__(self, records: list[PluginRecord], settings: Settings, services: Services | None = None) -> None:
        self.records = records
        self.settings = settings
        self.services = services or Services(settings)
        self.runners: dict[str, PluginRunner] = {}
        host.select(records, settings)

    @classmethod
    def from_environment(
        cls,
        config_path: Path | None = None,
        overrides: Overrides | None = None,
        environ: Mapping[str, str] | None = None,
        entry_points: Iterable[tuple[Any, str, str]] | None = None,
    ) -> Exporter:
        """Discover plugins and resolve settings (raises SettingError on bad input)."""
        records = host.discover(entry_points)
        settings, warnings = resolve(host.plugin_options(records), config_path, environ, overrides)
        for w in warnings:
            log.warning("%s", w)
        return cls(records, settings)

    # -- lifecycle -------------------------------------------------------
    def check_all(self) -> None:
        """Run support checks only (``plugins``, ``doctor``): nothing is started."""
        for rec in self.records:
            host.check(rec, self.settings, self.services)

    def start(self, only: Iterable[str] | None = None) -> None:
        wanted = set(only) if only is not None else None
        for rec in self.records:
            if rec.state == "failed":
                log.error("plugin %s (%s %s) failed to %s: %s", rec.name, rec.distribution, rec.version,
                          rec.failed_phase, rec.reason)
            if wanted is not None and rec.name not in wanted:
                if rec.state not in ("failed",):
                    rec.state, rec.reason = "disabled", "not selected"
                continue
            host.start(rec, self.settings, self.services)
            if rec.state == "unsupported":
                log.warning("plugin %s unsupported: %s", rec.name, rec.reason)
            elif rec.state == "failed" and rec.failed_phase == "start":
                log.error("plugin %s failed to start: %s", rec.name, rec.reason)
            if rec.collector is not None:
                self.runners[rec.name] = PluginRunner(rec)
        if self.settings.core["strict"]:
            failed = [r for r in self.records if r.state == "failed"]
            if failed:
                names = ", ".join(f"{r.name} ({r.reason})" for r in failed)
                raise StrictModeError(f"strict mode: plugins failed: {names}")

    def stop(self) -> None:
        for runner in self.runners.values():
            runner.close()
        for rec in self.records:
            host.stop(rec)
        self.services.stop()

    # -- scraping --------------------------------------------------------
    def collect(self, only: Iterable[str] | None = None) -> Scrape:
        """One scrape: every runner in parallel, each bounded by collect_timeout."""
        wanted = set(only) if only is not None else None
        runners = [r for name, r in self.runners.items() if wanted is None or name in wanted]
        deadline = time.monotonic() + float(self.settings.core["collect_timeout"])
        futures = [(r, r.submit()) for r in runners]
        results: dict[str, CollectResult] = {}
        for runner, fut in futures:
            results[runner.record.name] = runner.wait(fut, deadline)
        scrape = Scrape()
        families = scrape.families
        for rec in self.records:
            if wanted is not None and rec.name not in wanted:
                continue
            result = results.get(rec.name)
            if rec.spec is not None and result is not None:
                for spec in rec.spec.metrics:
                    samples = result.by_metric.get(spec.name)
                    if samples:
                        scrape.groups.append((spec, samples))
            if rec.spec is not None and rec.errors is not None and rec.state in ("active", "failed"):
                totals = rec.errors.metric_totals()
                for spec in rec.spec.metrics:
                    if spec.error_counter:
                        fam = Metric(PREFIX + spec.name.removesuffix("_total"), spec.help, "counter")
                        fam.samples.append(PromSample(PREFIX + spec.name, {}, float(totals[spec.name]), None, None))
                        families.append(fam)
        families.extend(meta_families(self.records, results, wanted))
        for service in self.services.built().values():
            provider = getattr(service, "metric_families", None)
            if provider is not None:
                try:
                    families.extend(provider())
                except Exception:
                    log.warning("service metrics failed", exc_info=True)
        return scrape
