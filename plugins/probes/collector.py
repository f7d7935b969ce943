"""Glue: targets from the shared directory -> scheduled probes -> samples."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from functools import partial

from crusoe_metrics_exporter.plugins.probes import ProbeOptions, icmp
from crusoe_metrics_exporter.plugins.probes.http_probe import http_get, tls_context
from crusoe_metrics_exporter.plugins.probes.nfs_rpc import null_rpc
from crusoe_metrics_exporter.plugins.probes.results import (
    HTTP,
    HTTPS,
    ICMP,
    NFS_RPC,
    TARGET_NFS,
    TARGET_OBJSTORE,
    Outcome,
    ProbeKey,
    ResultStore,
)
from crusoe_metrics_exporter.plugins.probes.scheduler import ProbeJob, ProbeScheduler
from crusoe_metrics_exporter.sdk import PluginContext, Sample, TargetsService

#: The seed capped its latency gauges at 1 s and reported failure as 1 s;
#: kept so existing dashboards read the same (the probe_* metrics are exact).
SEED_CAP_SECONDS = 1.0
ERRORS = "probes_collection_errors_total"


def resolve_icmp_modes(requested: str) -> dict[int, str | None]:
    """Socket kind per IP family: as configured, or detected once at start."""
    if requested != "auto":
        return {4: requested, 6: requested}
    return {4: icmp.detect_mode(4), 6: icmp.detect_mode(6)}


class ProbesCollector:
    def __init__(self, ctx: PluginContext[ProbeOptions]) -> None:
        self._ctx = ctx
        self._log: logging.Logger = ctx.log
        self.config = ctx.options
        self.store = ResultStore()
        self._directory: TargetsService | None = None
        self._tls: ssl.SSLContext | None = None
        self._tls_error = ""
        self._icmp_modes: dict[int, str | None] = {}
        self._sequence = 0
        self.scheduler: ProbeScheduler | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._directory = self._ctx.targets
        self._directory.start()  # first discovery (DNS included) happens here, not in a scrape
        self._icmp_modes = resolve_icmp_modes(self.config.icmp_mode)
        for family, mode in self._icmp_modes.items():
            if mode is None:
                self._log.warning("probes: no ICMP socket for IPv%d (no ping_group_range, no CAP_NET_RAW); "
                                  "ICMP probes will fail with reason=permission", family)
        try:
            self._tls = tls_context(self.config.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            self._tls_error = f"cannot load CA bundle {self.config.ca_bundle!r}: {exc}"
            self._log.error("probes: %s; HTTPS probes will fail with reason=tls_config", self._tls_error)
            self._ctx.errors.inc(ERRORS)
        self._ctx.details.update(
            icmp_ipv4=self._icmp_modes.get(4) or "unavailable",
            icmp_ipv6=self._icmp_modes.get(6) or "unavailable",
            interval=f"{self.config.interval:g}s",
        )
        self.scheduler = ProbeScheduler(
            jobs=self.jobs,
            store=self.store,
            interval=self.config.interval,
            jitter=self.config.jitter,
            concurrency=self.config.concurrency,
            on_error=lambda: self._ctx.errors.inc(ERRORS),
        )
        self.scheduler.start()
        self._directory.subscribe(self._targets_changed)

    def stop(self) -> None:
        if self._directory is not None:
            self._directory.unsubscribe(self._targets_changed)
        if self.scheduler is not None:
            self.scheduler.stop()

    def _targets_changed(self) -> None:
        # New endpoints get their first result now rather than up to an
        # interval later; vanished ones lose their series at once.
        if self.scheduler is not None:
            self.scheduler.run_new()

    # -- what to probe -------------------------------------------------------
    def jobs(self) -> list[ProbeJob]:
        """The probes of one round, from the directory's current snapshot (no DNS)."""
        cfg = self.config
        assert self._directory is not None
        self._sequence = (self._sequence + 1) & 0xFFFF
        jobs: list[ProbeJob] = []
        for server in self._directory.nfs_servers():
            jobs.append(self._icmp_job(TARGET_NFS, server.address, server.family))
            for port in server.ports:
                key = ProbeKey(NFS_RPC, TARGET_NFS, server.address, port)
                probe = partial(null_rpc, server.address, port, cfg.nfs_rpc_version, cfg.probe_timeout)
                jobs.append(ProbeJob(key, probe))
        for endpoint in self._directory.objstore_endpoints():
            jobs.append(self._icmp_job(TARGET_OBJSTORE, endpoint.address, endpoint.family))
            for port in endpoint.ports:
                if port not in cfg.https_ports:
                    host = endpoint.fqdn or endpoint.address
                    key = ProbeKey(HTTP, TARGET_OBJSTORE, endpoint.address, port)
                    jobs.append(ProbeJob(key, partial(http_get, endpoint.address, port, host, cfg.probe_timeout, None)))
                elif endpoint.fqdn:
                    # Without a name there is nothing to verify the certificate
                    # against, so (like the seed) no HTTPS probe.
                    key = ProbeKey(HTTPS, TARGET_OBJSTORE, endpoint.address, port)
                    jobs.append(ProbeJob(key, partial(self._https, endpoint.address, port, endpoint.fqdn)))
        return jobs

    def _icmp_job(self, target: str, address: str, family: int) -> ProbeJob:
        mode = self._icmp_modes.get(family)
        key = ProbeKey(ICMP, target, address)
        if mode is None:
            return ProbeJob(key, lambda: Outcome.failed("permission", 0.0, detail="no ICMP socket available"))
        timeout = self.config.probe_timeout
        return ProbeJob(key, partial(icmp.ping, address, family, timeout, mode, sequence=self._sequence))

    def _https(self, address: str, port: int, fqdn: str) -> Outcome:
        if self._tls is None:
            return Outcome.failed("tls_config", 0.0, detail=self._tls_error)
        return http_get(address, port, fqdn, self.config.probe_timeout, self._tls)

    # -- scrape --------------------------------------------------------------
    def collect(self) -> Iterable[Sample]:
        latest, failures = self.store.snapshot()
        samples: list[Sample] = []
        nfs_ports = tuple(self._directory.nfs_ports) if self._directory is not None else ()
        seed_rpc_port = nfs_ports[0] if nfs_ports else 0
        seed_https_port = self.config.https_ports[0] if self.config.https_ports else 0
        for key in sorted(latest):
            result = latest[key]
            outcome = result.outcome
            labels = key.labels()
            samples.append(Sample("probe_success", labels, 1.0 if outcome.success else 0.0))
            samples.append(Sample("probe_duration_seconds", labels, outcome.duration))
            samples.append(Sample("probe_last_run_timestamp_seconds", labels, result.finished_at))
            for phase, seconds in outcome.phases:
                samples.append(Sample("probe_phase_duration_seconds", (*labels, phase), seconds))
            seed_metric = _seed_metric(key, seed_rpc_port, seed_https_port)
            if seed_metric is not None:
                samples.append(Sample(seed_metric, (key.endpoint,), _seed_value(key, outcome)))
        for (key, reason), count in sorted(failures.items()):
            samples.append(Sample("probe_failures_total", (*key.labels(), reason), float(count)))
        return samples


def _seed_metric(key: ProbeKey, rpc_port: int, https_port: int) -> str | None:
    if key.probe == ICMP:
        return "nfs_ping_latency_seconds" if key.target == TARGET_NFS else "objectstore_ping_latency_seconds"
    if key.probe == NFS_RPC and key.port == rpc_port:
        return "nfs_rpc_probe_latency_seconds"
    if key.probe == HTTPS and key.port == https_port:
        return "objectstore_https_probe_latency_seconds"
    return None


def _seed_value(key: ProbeKey, outcome: Outcome) -> float:
    if not outcome.success:
        return SEED_CAP_SECONDS
    # The seed's ping value was the echo round trip; its RPC and HTTPS values
    # were the whole exchange including the TCP handshake.
    seconds = dict(outcome.phases).get("rtt", outcome.duration) if key.probe == ICMP else outcome.duration
    return min(seconds, SEED_CAP_SECONDS)
