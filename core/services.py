"""Shared services plugins can ask for by name (``ctx.services.get("targets")``).

A service is built on first use and stopped with the exporter, so a helper
that starts background threads (target discovery, DNS refresh) costs nothing
when no enabled plugin needs it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from crusoe_metrics_exporter.settings import Settings

log = logging.getLogger(__name__)

ServiceFactory = Callable[[Settings], Any]

#: name -> "module:callable" building the service from Settings. Kept as
#: strings so importing the core does not import every service.
BUILTIN_SERVICES: dict[str, str] = {
    "targets": "crusoe_metrics_exporter.targets.directory:TargetDirectory",
    "ebpf": "crusoe_metrics_exporter.ebpf.service:EbpfService",
}


class Services:
    def __init__(self, settings: Settings | None, factories: dict[str, str] | None = None) -> None:
        self._settings = settings
        self._factories = dict(BUILTIN_SERVICES if factories is None else factories)
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        with self._lock:
            if name not in self._built:
                if name not in self._factories:
                    raise KeyError(f"no shared service named {name!r}")
                module_name, _, attr = self._factories[name].partition(":")
                if self._settings is None:
                    raise KeyError(f"shared service {name!r} needs settings; none were given")
                module = importlib.import_module(module_name)
                self._built[name] = getattr(module, attr)(self._settings)
            return self._built[name]

    def built(self) -> dict[str, Any]:
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
