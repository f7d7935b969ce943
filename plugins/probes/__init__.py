"""Health probes of NFS servers and the object store: ICMP echo, NFS NULL RPC, HTTPS.

The seed's four capped latency gauges are kept by name; next to them each
probe of each endpoint reports success, exact duration, phase durations and
when it last ran, blackbox_exporter style, so a failure never reads as a slow
success and stale results are visible. Probes run on a background schedule;
a scrape only reads their last results.
"""

from __future__ import annotations

from dataclasses import dataclass

from crusoe_metrics_exporter.sdk import Collector, MetricSpec, PluginContext, PluginSpec, Support, hookimpl, option

_PROBE_LABELS = ("probe", "target", "endpoint", "port")

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "nfs_ping_latency_seconds",
        "gauge",
        "ICMP ping RTT to NFS server in seconds (capped at 1.0 on timeout/failure)",
        ("endpoint",),
    ),
    MetricSpec(
        "nfs_rpc_probe_latency_seconds",
        "gauge",
        "NFSv4 NULL RPC probe latency in seconds (capped at 1.0 on timeout/failure)",
        ("endpoint",),
    ),
    MetricSpec(
        "objectstore_ping_latency_seconds",
        "gauge",
        "ICMP ping RTT to object store server in seconds (capped at 1.0 on timeout/failure)",
        ("endpoint",),
    ),
    MetricSpec(
        "objectstore_https_probe_latency_seconds",
        "gauge",
        "HTTPS probe latency to object store in seconds (capped at 1.0 on timeout/failure)",
        ("endpoint",),
    ),
    MetricSpec(
        "probe_success",
        "gauge",
        "1 if the last run of the probe succeeded, 0 if it failed (probe: icmp, nfs_rpc, https, http; "
        "port is empty for icmp).",
        _PROBE_LABELS,
    ),
    MetricSpec(
        "probe_duration_seconds",
        "gauge",
        "Time the last run of the probe took, uncapped, whether it succeeded or not.",
        _PROBE_LABELS,
    ),
    MetricSpec(
        "probe_phase_duration_seconds",
        "gauge",
        "Duration of each completed phase of the last run (icmp: rtt; nfs_rpc: connect, rpc; "
        "https: connect, tls, first_byte; http: connect, first_byte).",
        (*_PROBE_LABELS, "phase"),
    ),
    MetricSpec(
        "probe_last_run_timestamp_seconds",
        "gauge",
        "Unix time the last run of the probe finished; older than the probe interval plus jitter means stale.",
        _PROBE_LABELS,
    ),
    MetricSpec(
        "probe_failures_total",
        "counter",
        "Failed probe runs by reason (timeout, refused, unreachable, bad_xid, prog_mismatch, denied, garbage, "
        "tls_verify, ...).",
        (*_PROBE_LABELS, "reason"),
    ),
    MetricSpec.errors(
        "probes_collection_errors_total",
        "Errors of the probes plugin itself (not of the probed endpoints): probes that raised, overran their "
        "timeout, or could not be set up.",
    ),
)

@dataclass(frozen=True)
class ProbeOptions:
    interval: float = option("duration", 300.0, "How often every probe runs.", env="PROBE_INTERVAL", minimum=1.0,
                             maximum=24 * 3600.0)
    jitter: float = option(
        "duration", 30.0,
        "Random delay added to each round (at most half the interval) so many hosts do not probe in step.",
        env="PROBE_JITTER", minimum=0.0, maximum=12 * 3600.0)
    timeout: float = option("duration", 10.0, "Per-probe timeout (at most the interval).", env="PROBE_TIMEOUT",
                            minimum=0.05, maximum=600.0)
    concurrency: int = option("int", 16, "How many probes may run at the same time.", minimum=1, maximum=256)
    nfs_rpc_version: int = option("int", 4, "NFS program version of the NULL RPC probe: 4 or 3.", choices=("4", "3"))
    ca_bundle: str = option(
        "path", "", "PEM file of CAs that verify the object store's certificate; empty means the system trust store.",
        env="PROBE_CA_BUNDLE")
    https_ports: tuple[int, ...] = option(
        "port_list", (443,),
        "Object-store ports probed with HTTPS; the other object-store ports get a plain HTTP probe.")
    icmp_mode: str = option(
        "str", "auto",
        "ICMP socket kind: auto (datagram if net.ipv4.ping_group_range allows, else raw), unprivileged, raw.",
        choices=("auto", "unprivileged", "raw"))

    @property
    def probe_timeout(self) -> float:
        """The timeout each probe runs with: a probe must end before its next run is due."""
        return min(self.timeout, self.interval)


def _factory(ctx: PluginContext[ProbeOptions]) -> Collector:
    from crusoe_metrics_exporter.plugins.probes.collector import ProbesCollector

    return ProbesCollector(ctx)


def _check_support(ctx: PluginContext[ProbeOptions]) -> Support:
    # Probing needs nothing from the host beyond sockets; with no targets the
    # plugin simply reports nothing until discovery finds some.
    targets = ctx.targets
    objstore = "fqdn" if targets.objstore_fqdn else ("ips" if targets.objstore_configured else "none")
    return Support.ok(nfs_ports=",".join(str(p) for p in targets.nfs_ports), objstore=objstore)


SPEC = PluginSpec(
    name="probes",
    description="ICMP, NFS NULL RPC and HTTPS health probes of the NFS servers and the object store.",
    metrics=METRICS,
    factory=_factory,
    check_support=_check_support,
    options=ProbeOptions,
)


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[ProbeOptions]:
    return SPEC
