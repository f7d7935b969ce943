"""The ``targets`` shared service: its ``[targets]`` options and its registration.

Registered through the ``crusoe_metrics_exporter.services`` entry point
``targets``, the way a third-party service would be; the core does not know
it. Plugins reach it as ``ctx.targets``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from crusoe_metrics_exporter.contract import DoctorCheck, ServiceContext, ServiceSpec
from crusoe_metrics_exporter.hookspecs import hookimpl
from crusoe_metrics_exporter.schema import Derived, OptionError, OptionWarning, option
from crusoe_metrics_exporter.targets.dns import DNS_METRICS
from crusoe_metrics_exporter.targets.region import NoRegion, objstore_endpoint, region_from_node_name
from crusoe_metrics_exporter.targets.volumes import DEFAULT_VOLUME_PATTERN, compile_volume_pattern

#: The longest refresh interval accepted, in seconds.
DAY = 24 * 3600.0


@dataclass(frozen=True)
class TargetOptions:
    """``[targets]``: where the NFS servers and the object store are (the seed's NFS_* and OBJSTORE_* variables)."""

    nfs_server_ips: tuple[str, ...] = option(
        "hostname_list", (), "NFS servers (IPs or host names) in addition to those found in the host's mounts.",
        env="NFS_SERVER_IPS")
    nfs_target_ports: tuple[int, ...] = option("port_list", (2049,), "NFS server ports.", env="NFS_TARGET_PORTS")
    nfs_enable_volume_id: bool = option(
        "bool", True, "Label NFS metrics with the volume id taken from the mount's device.",
        env="NFS_ENABLE_VOLUME_ID")
    nfs_volume_id_pattern: str = option(
        "regex", DEFAULT_VOLUME_PATTERN, "Regex with a named group 'volume_id' applied to an NFS mount's device.")
    nfs_mount_refresh_interval: float = option(
        "duration", 30.0,
        "How often the NFS server names (NFS_SERVER_IPS, mounts by host name) are re-resolved, with the mounts "
        "re-read. A change of the host's mount table is seen at once without it (the kernel signals it); "
        "where the table cannot signal (a copy not on procfs) this is also how often it is re-read. "
        "Never in a scrape.",
        env="NFS_MOUNT_REFRESH_INTERVAL", minimum=1.0, maximum=DAY)
    objstore_endpoint_fqdn: str = option(
        "hostname", "",
        "Object store host name; its A and AAAA records are the endpoints. When unset, it is derived from "
        "node_name: object.<region>.crusoecloudcompute.com.",
        env="OBJSTORE_ENDPOINT_FQDN")
    node_name: str = option(
        "str", "",
        "The Kubernetes node name (the DaemonSet passes spec.nodeName). Its second dot-separated part is the "
        "region the object-store FQDN is derived from when objstore_endpoint_fqdn is unset.",
        env="NODE_NAME")
    objstore_endpoint_ips: tuple[str, ...] = option(
        "ip_list", (),
        "Object store endpoint IPs, used when no FQDN is set or derived, and while the FQDN resolves to no "
        "address.",
        env="OBJSTORE_ENDPOINT_IPS")
    objstore_endpoint_ports: tuple[int, ...] = option(
        "port_list", (443, 80), "Object store ports.", env="OBJSTORE_ENDPOINT_PORT")
    objstore_refresh_interval: float = option(
        "duration", 300.0, "How often the object store FQDN is re-resolved.", minimum=1.0, maximum=DAY)

    def __post_init__(self) -> None:
        # Checked when settings are resolved, not when a plugin starts, so a
        # pattern without its named group is one clear start-up error shared
        # by every NFS plugin. Ignored while volume ids are off (as before).
        if self.nfs_enable_volume_id:
            try:
                compile_volume_pattern(self.nfs_volume_id_pattern)
            except ValueError as exc:
                raise OptionError("nfs_volume_id_pattern", str(exc)) from None


    @classmethod
    def derive(cls, values: Mapping[str, Any]) -> Iterator[Derived | OptionWarning]:
        """Without an object-store FQDN, take it from the node name's region (the Go exporter's rule).

        A node name that yields no region is one warning, never a start-up
        failure: the exporter then uses OBJSTORE_ENDPOINT_IPS, if given.
        """
        if values["objstore_endpoint_fqdn"] or not values["node_name"].strip():
            return
        try:
            fqdn = objstore_endpoint(region_from_node_name(values["node_name"]))
        except NoRegion as exc:
            fallback = ("OBJSTORE_ENDPOINT_IPS is used" if values["objstore_endpoint_ips"]
                        else "no object store is known")
            yield OptionWarning("node_name", f"{exc}; no object-store FQDN derived ({fallback})")
            return
        yield Derived("objstore_endpoint_fqdn", fqdn, "node_name")


def _factory(ctx: ServiceContext[TargetOptions]) -> object:
    from crusoe_metrics_exporter.targets.directory import TargetDirectory

    return TargetDirectory(ctx.options, ctx.host_proc)


def _doctor(ctx: ServiceContext[TargetOptions]) -> Iterator[DoctorCheck]:
    """Each configured host name resolves (a name in the host's mounts is checked by the plugins using it)."""
    names = [("objectstore", ctx.options.objstore_endpoint_fqdn)] if ctx.options.objstore_endpoint_fqdn else []
    names += [("nfs", n) for n in ctx.options.nfs_server_ips]
    for kind, name in names:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            addrs = sorted({str(i[4][0]) for i in infos})
            yield DoctorCheck(f"resolve {kind} {name}", True, ", ".join(addrs))
        except OSError as exc:
            yield DoctorCheck(f"resolve {kind} {name}", False, str(exc), "check the name and the host's DNS resolver")


@hookimpl
def crusoe_metrics_exporter_service() -> ServiceSpec[TargetOptions]:
    return ServiceSpec(
        name="targets",
        description="Where the NFS servers, NFS mounts and object-store endpoints are, refreshed in the background.",
        factory=_factory,
        options=TargetOptions,
        metrics=DNS_METRICS,
        doctor=_doctor,
    )
