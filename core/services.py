"""Shared services: declared through the service hook, built on first use, stopped with the exporter.

The core lists no service. Each one (target discovery, the eBPF runtime, a
third party's) is a :class:`~crusoe_metrics_exporter.contract.ServiceSpec`
found through the ``crusoe_metrics_exporter.services`` entry points. A
service is built when the first plugin asks for it, so one that starts
background threads costs nothing when no enabled plugin needs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crusoe_metrics_exporter.contract import MetricSpec, Sample, ServiceContext, ServiceSpec
from crusoe_metrics_exporter.runner import SampleGate

if TYPE_CHECKING:
    from crusoe_metrics_exporter.host import ServiceRecord
    from crusoe_metrics_exporter.settings import Settings

log = logging.getLogger(__name__)


class ServiceUnavailable(LookupError):
    """A plugin asked for a service that is not installed or failed to load; ``str()`` is one line."""


class ServiceRegistry:
    """The installed services and the instances built so far."""

    def __init__(self, records: Iterable[ServiceRecord], settings: Settings | None) -> None:
        self._records = {r.name: r for r in records}
        self._settings = settings
        self._built: dict[str, object] = {}
        self._gates: dict[str, SampleGate] = {}
        self._lock = threading.Lock()

    @property
    def records(self) -> list[ServiceRecord]:
        return list(self._records.values())

    def spec(self, name: str) -> ServiceSpec[Any] | None:
        rec = self._records.get(name)
        return rec.spec if rec is not None else None

    def context(self, name: str) -> ServiceContext[Any]:
        """The context the service ``name`` is (or would be) built with."""
        rec = self._records[name]
        if self._settings is None:
            raise ServiceUnavailable(f"shared service {name!r} needs settings; none were given")
        core = self._settings.core
        return ServiceContext(
            name=name,
            options=rec.options,
            host_proc=Path(core["host_proc_path"]),
            state_dir=Path(core["state_dir"]),
            log=logging.getLogger(f"crusoe_metrics_exporter.services.{name}"),
        )

    def get(self, name: str) -> object:
        with self._lock:
            if name in self._built:
                return self._built[name]
            rec = self._records.get(name)
            if rec is None:
                raise ServiceUnavailable(f"no shared service named {name!r} is installed")
            if rec.spec is None or rec.state == "failed":
                raise ServiceUnavailable(f"shared service {name!r} is unavailable: {rec.reason}")
            service = rec.spec.factory(self.context(name))
            self._built[name] = service
            return service

    def metric_groups(self) -> list[tuple[MetricSpec, Sequence[Sample]]]:
        """The samples of every built service that declares metrics, validated against its declarations.

        A service's ``collect()`` that raises costs only its own metrics.
        """
        out: list[tuple[MetricSpec, Sequence[Sample]]] = []
        for name, service in self.built().items():
            spec = self.spec(name)
            collect = getattr(service, "collect", None)
            if spec is None or not spec.metrics or collect is None:
                continue
            gate = self._gates.get(name)
            if gate is None:
                gate = self._gates[name] = SampleGate(f"service {name}", spec.metrics)
            try:
                samples = list(collect())
            except Exception as exc:
                log.warning("service %s: collecting its metrics failed: %s: %s", name, type(exc).__name__, exc)
                log.debug("service %s: traceback", name, exc_info=True)
                continue
            out.extend(gate.groups(samples))
        return out

    def provide(self, name: str, service: object) -> None:
        """Use ``service`` as the service ``name`` (tests, embedding): it is not built from its spec."""
        with self._lock:
            self._built[name] = service

    def built(self) -> dict[str, object]:
        with self._lock:
            return dict(self._built)

    def stop(self) -> None:
        for name, service in self.built().items():
            stopper = getattr(service, "stop", None)
            if stopper is None:
                continue
            try:
                stopper()
            except Exception:
                log.warning("service %s raised while stopping", name, exc_info=True)
