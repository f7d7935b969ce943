"""``doctor``: what each plugin needs, checked on this host, with a fix for each failure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.capabilities import unreadable
from crusoe_metrics_exporter.files import open_regular

if TYPE_CHECKING:
    from crusoe_metrics_exporter.app import Exporter


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(exporter: Exporter) -> Iterator[Check]:
    yield from _procfs_check(Path(exporter.settings.core["host_proc_path"]))
    yield from _service_checks(exporter)
    yield from _plugin_checks(exporter)


def _procfs_check(proc: Path) -> Iterator[Check]:
    """HOST_PROC_PATH is a procfs: what each plugin reads from it is checked by the plugin's support check."""
    path = proc / "1" / "mounts"
    try:
        with open_regular(path) as fh:
            fh.read(1)
        yield Check(f"read {path}", True, "HOST_PROC_PATH is a readable /proc")
    except OSError as exc:
        denied = unreadable(path, exc)
        if denied is not None:
            yield Check(f"read {path}", False, denied.reason, denied.fix)
            return
        yield Check(f"read {path}", False, f"{exc.strerror or exc}: HOST_PROC_PATH is not the host's /proc",
                    "set HOST_PROC_PATH to the host's /proc (in a container mount it at /host/proc)")


def _service_checks(exporter: Exporter) -> Iterator[Check]:
    """What each shared service checks about this host, for the services some enabled plugin may use."""
    for rec in exporter.service_records:
        if rec.spec is None or rec.state == "failed":
            yield Check(f"service {rec.name}", False, f"failed to {rec.failed_phase}: {rec.reason}",
                        f"reinstall or remove the distribution {rec.distribution}")
            continue
        if rec.spec.doctor is None:
            continue
        try:
            for name, ok, detail, fix in rec.spec.doctor(exporter.services.context(rec.name)):
                yield Check(name, ok, detail, fix)
        except Exception as exc:  # noqa: BLE001 - one service's broken check must not end doctor
            yield Check(f"service {rec.name}", False, f"its checks raised {type(exc).__name__}: {exc}")


def _plugin_checks(exporter: Exporter) -> Iterator[Check]:
    exporter.load_trusted()
    exporter.run_workers("check")
    for rec in exporter.records:
        support = host.check(rec, exporter.settings, exporter.services) if rec.isolation == "in-process" else None
        if rec.state == "disabled":
            yield Check(f"plugin {rec.name}", True, "disabled by configuration")
        elif rec.state == "failed":
            yield Check(f"plugin {rec.name}", False, f"failed to {rec.failed_phase}: {rec.reason}",
                        f"reinstall or remove the distribution {rec.distribution}")
        elif support is not None and not support.supported and support.needs_configuration:
            yield Check(f"plugin {rec.name}", True, f"not configured: {support.reason}")
        elif support is not None and not support.supported:
            yield Check(f"plugin {rec.name}", False, f"unsupported: {support.reason}", support.fix)
        elif rec.state == "unsupported":
            yield Check(f"plugin {rec.name}", False, f"unsupported: {rec.reason}", rec.fix)
        else:
            details = ", ".join(f"{k}={v}" for k, v in sorted(rec.details.items()))
            yield Check(f"plugin {rec.name}", True, "supported" + (f" ({details})" if details else ""))
