"""``doctor``: what each plugin needs, checked on this host, with a fix for each failure."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.capabilities import unreadable

if TYPE_CHECKING:
    from crusoe_metrics_exporter.app import Exporter


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(exporter: Exporter) -> Iterator[Check]:
    yield from _ebpf_checks()
    yield from _procfs_checks(Path(exporter.settings.core["host_proc_path"]))
    yield from _endpoint_checks(exporter)
    yield from _plugin_checks(exporter)


def _ebpf_checks() -> Iterator[Check]:
    from crusoe_metrics_exporter.ebpf import doctor_checks

    for name, ok, detail, fix in doctor_checks():
        yield Check(name, ok, detail, fix)


def _procfs_checks(proc: Path) -> Iterator[Check]:
    for rel, who in (("diskstats", "disk_stats"), ("1/mounts", "disk_usage, NFS discovery"),
                     ("1/mountstats", "nfs_stats")):
        path = proc / rel
        try:
            with path.open("rb") as fh:
                fh.read(1)
            yield Check(f"read {path}", True, f"readable (used by {who})")
        except OSError as exc:
            denied = unreadable(path, exc)
            if denied is not None:
                yield Check(f"read {path}", False, f"{denied.reason} (used by {who})", denied.fix)
                continue
            yield Check(
                f"read {path}",
                False,
                f"{exc.strerror or exc} (used by {who})",
                "set HOST_PROC_PATH to the host's /proc (in a container mount it at /host/proc)",
            )


def _endpoint_checks(exporter: Exporter) -> Iterator[Check]:
    t = exporter.settings.targets
    names = [("objectstore", t["objstore_endpoint_fqdn"])] if t["objstore_endpoint_fqdn"] else []
    names += [("nfs", n) for n in t["nfs_server_ips"]]
    for kind, name in names:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            addrs = sorted({str(i[4][0]) for i in infos})
            yield Check(f"resolve {kind} {name}", True, ", ".join(addrs))
        except OSError as exc:
            yield Check(f"resolve {kind} {name}", False, str(exc), "check the name and the host's DNS resolver")


def _plugin_checks(exporter: Exporter) -> Iterator[Check]:
    for rec in exporter.records:
        support = host.check(rec, exporter.settings, exporter.services)
        if rec.state == "disabled":
            yield Check(f"plugin {rec.name}", True, "disabled by configuration")
        elif rec.state == "failed":
            yield Check(f"plugin {rec.name}", False, f"failed to {rec.failed_phase}: {rec.reason}",
                        f"reinstall or remove the distribution {rec.distribution}")
        elif support is not None and not support.supported and support.needs_configuration:
            yield Check(f"plugin {rec.name}", True, f"not configured: {support.reason}")
        elif support is not None and not support.supported:
            yield Check(f"plugin {rec.name}", False, f"unsupported: {support.reason}", support.fix)
        else:
            details = ", ".join(f"{k}={v}" for k, v in sorted(rec.details.items()))
            yield Check(f"plugin {rec.name}", True, "supported" + (f" ({details})" if details else ""))
