"""The worker process: one third-party plugin, driven by the exporter over a socket.

Started by :mod:`.supervisor` as ``python -m crusoe_metrics_exporter.isolation.worker FD PARENT_PID``.
It dies with its parent (PR_SET_PDEATHSIG), volunteers to be the first
victim of the OOM killer, caps its own data segment, and then answers one
request at a time:

``load``
    import the entry point, call the hook, validate the PluginSpec; reply
    with the declaration (metrics, options) the exporter needs.
``configure``
    build the services and the plugin's options from the settings the
    exporter resolved (the options class's own checks run here).
``check``, ``start``
    the support check; the factory and ``start()``.
``collect``
    one collect, encoded as :mod:`.protocol` sample rows, at most
    ``series_limit`` rows and ``frame_limit`` bytes; the rest is counted.
``stop``
    ``stop()`` the collector and the services, reply, exit.

Every plugin call is inside ``except BaseException``: ``sys.exit()`` or a
KeyboardInterrupt from the plugin is an error reply, not an exit. What the
worker cannot catch (``os._exit``, a segfault, a hang, the memory limit)
the exporter sees as a dead or silent worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import importlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.contract import Collector, PluginSpec, Sample, Support
from crusoe_metrics_exporter.host import PluginRecord, describe_failure
from crusoe_metrics_exporter.isolation import protocol
from crusoe_metrics_exporter.naming import InvalidDeclaration
from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.schema import config_options
from crusoe_metrics_exporter.services import ServiceRegistry
from crusoe_metrics_exporter.settings import LOG_LEVELS, Settings, typed_options

log = logging.getLogger("crusoe_metrics_exporter.isolation.worker")

_PR_SET_PDEATHSIG = 1
_THREAD_STACK = 8 * 1024 * 1024


class Failure(Exception):
    """A request failed in the plugin's phase ``phase``; ``str()`` is the reason."""

    def __init__(self, phase: str, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.phase = phase
        self.where = where


class Worker:
    def __init__(self, hello: dict[str, Any]) -> None:
        self.name = str(hello["plugin"])
        self.distribution = str(hello["distribution"])
        self.value = str(hello["entry_point"])
        self.group = str(hello["group"])
        self.series_limit = int(hello["series_limit"])
        self.frame_limit = int(hello["frame_limit"])
        self.record = PluginRecord(self.name, self.distribution, "", self.value)
        self.spec: PluginSpec[Any] | None = None
        self.settings: Settings | None = None
        self.services: ServiceRegistry | None = None
        self.collector: Collector | None = None

    # -- requests ----------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        ep = self._entry_point()
        try:
            declared = host.declaration(ep, self.name, "crusoe_metrics_exporter_plugin")
        except BaseException as exc:  # noqa: BLE001 - sys.exit() at import is the plugin's failure
            raise _failure("load", exc) from None
        try:
            spec = host.validate_spec(declared, self.name)
            options = config_options(spec.options)
        except InvalidDeclaration as exc:
            raise Failure("validate", str(exc)) from None
        self.spec = self.record.spec = spec
        return {
            "description": spec.description,
            "metrics": [dataclasses.asdict(m) for m in spec.metrics],
            "options": [dataclasses.asdict(o) for o in options],
        }

    def configure(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.spec is not None
        given = request["settings"]
        settings = Settings(core=given["core"], services=given["services"], plugins={self.name: given["plugin"]},
                            spellings=given["spellings"])
        logging.getLogger().setLevel(LOG_LEVELS.get(str(settings.core.get("log_level")), logging.INFO))
        try:
            self.record.options = typed_options(settings, f"plugins.{self.name}", self.spec.options)
        except SettingError as exc:
            raise Failure("options", str(exc)) from None
        except BaseException as exc:  # noqa: BLE001 - the options class's own code
            raise _failure("options", exc) from None
        self.settings = settings
        self.services = LazyServices(settings)
        return {}

    def check(self) -> dict[str, Any]:
        assert self.spec is not None and self.settings is not None and self.services is not None
        ctx = host.make_context(self.record, self.settings, self.services)
        try:
            answer: object = self.spec.check_support(ctx)
        except BaseException as exc:  # noqa: BLE001
            raise _failure("start", exc, "support check raised ") from None
        if not isinstance(answer, Support):
            raise Failure("start", f"support check returned {type(answer).__name__}, not a Support")
        return {"support": {"supported": answer.supported, "reason": answer.reason, "fix": answer.fix,
                            "details": {str(k): str(v) for k, v in answer.details.items()},
                            "needs_configuration": answer.needs_configuration},
                "details": self.record.details}

    def start(self) -> dict[str, Any]:
        assert self.spec is not None and self.settings is not None and self.services is not None
        ctx = host.make_context(self.record, self.settings, self.services)
        try:
            self.collector = self.spec.factory(ctx)
            self.collector.start()
        except BaseException as exc:  # noqa: BLE001
            raise _failure("start", exc) from None
        return {"details": self.record.details}

    def collect(self) -> tuple[dict[str, Any], bytes]:
        assert self.collector is not None and self.record.errors is not None
        try:
            rows, over = _encode(self.collector.collect(), self.series_limit, self.frame_limit)
        except BaseException as exc:  # noqa: BLE001
            raise _failure("collect", exc) from None
        meta = {"over": over, "errors": self.record.errors.metric_totals(), "details": self.record.details}
        return meta, rows

    def stop(self) -> dict[str, Any]:
        if self.collector is not None:
            host.stop_collector(self.name, self.collector)
        if self.services is not None:
            self.services.stop()
        return {}

    def _entry_point(self) -> _EntryPoint:
        # Built from what the exporter found, not looked up again: scanning every installed
        # distribution's metadata (importlib.metadata) costs a worker time and ~3 MiB for nothing.
        return _EntryPoint(self.value)


@dataclasses.dataclass(frozen=True)
class _EntryPoint:
    """``module:attribute`` loaded as importlib.metadata's EntryPoint.load() does."""

    value: str

    def load(self) -> Any:
        module_name, _, attribute = self.value.partition(":")
        obj: Any = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            obj = getattr(obj, part)
        return obj


class LazyServices(ServiceRegistry):
    """The shared services, discovered and built only when the plugin first asks for one.

    Most third-party plugins use none; discovering them imports their
    modules (prometheus_client, the eBPF runtime), ~10 MiB per worker.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__([], settings)
        self._settings_for_services = settings
        self._ready = False

    def get(self, name: str) -> object:
        if not self._ready:
            records = host.discover_services()
            host.build_options(records, self._settings_for_services)
            ServiceRegistry.__init__(self, records, self._settings_for_services)
            self._ready = True
        return super().get(name)


def _failure(phase: str, exc: BaseException, prefix: str = "") -> Failure:
    text, where = describe_failure(exc)
    log.debug("traceback of the %s failure", phase, exc_info=exc)
    return Failure(phase, prefix + text, where)


def _encode(samples: Iterable[Sample], series_limit: int, frame_limit: int) -> tuple[bytes, int]:
    """Sample rows, one JSON line each; rows past either limit are counted, not encoded."""
    lines: list[bytes] = []
    size = 0
    over = 0
    for s in samples:
        if len(lines) >= series_limit or size >= frame_limit:
            over += 1
            continue
        line = protocol.encode_sample(s)
        size += len(line)
        lines.append(line)
    return b"".join(lines), over


# -- the processes -----------------------------------------------------------------------
#
# The exporter starts one "zygote": a process that imports everything a
# worker needs and then only forks. Each worker is a fork of it, so the
# interpreter and the modules are in memory once, shared copy-on-write,
# however many plugins run in workers (a worker started from scratch costs
# ~16 MiB before its plugin is even imported). The zygote is single-threaded
# and imports no plugin, so forking it is safe.

def _die_with(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies, however it dies: no orphan is left behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _limit_self(memory_bytes: int, max_threads: int) -> None:
    # The OOM killer takes this process before the exporter, if it comes to that.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    # A hard stop for allocations, so a burst between the exporter's looks cannot fill the memory cgroup;
    # the exporter stops the worker at its limits long before this. It counts virtual memory: the shared
    # interpreter, and 8 MiB of stack per thread.
    limit = 2 * memory_bytes + (max_threads + 8) * _THREAD_STACK + 128 * 1024 * 1024
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def serve(sock: socket.socket) -> None:
    """One worker: answer the exporter's requests until ``stop`` or until the exporter goes away."""
    hello = protocol.receive(sock)
    _limit_self(int(hello["memory_bytes"]), int(hello["max_threads"]))
    worker = Worker(hello)
    handlers = {"load": worker.load, "check": worker.check, "start": worker.start, "stop": worker.stop}
    while True:
        try:
            request = protocol.receive(sock)
        except protocol.PeerGone:
            return
        op = request.get("op")
        rows = b""
        try:
            if op == "configure":
                reply = worker.configure(request)
            elif op == "collect":
                reply, rows = worker.collect()
            else:
                reply = handlers[str(op)]()
            reply["ok"] = True
        except Failure as exc:
            reply = {"ok": False, "phase": exc.phase, "reason": str(exc), "where": exc.where}
        protocol.send(sock, reply, rows)
        if op == "stop":
            return


class Zygote:
    """Forks workers on request and knows how each of them ended.

    Requests on the control socket, one JSON message each:
    ``spawn`` (with the worker's socket attached) -> ``{"pid"}``;
    ``kill`` -> SIGKILL to the worker's process group, then its status;
    ``status`` -> ``{"status"}``: the exit status once it ended (negative:
    the signal), or null while it runs. Only the zygote's own children are
    ever signalled, and only before they are reaped, so a recycled pid is
    never hit.
    """

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.running: set[int] = set()
        self.ended: dict[int, int] = {}

    def loop(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.control, 4096, 1)
            except OSError:
                return
            if not data:
                return  # the exporter is gone; PR_SET_PDEATHSIG ends us too
            request = json.loads(data)
            self._reap()
            op = request.get("op")
            if op == "spawn":
                reply: dict[str, Any] = {"pid": self._fork(fds[0])}
            else:
                for fd in fds:
                    os.close(fd)
                pid = int(request["pid"])
                if op == "kill" and pid in self.running:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    self._reap(pid)
                elif op == "status" and pid in self.running and request.get("wait"):
                    self._reap(pid, float(request["wait"]))
                reply = {"status": self.ended.get(pid)}
            self.control.sendall(json.dumps(reply).encode())

    def _fork(self, fd: int) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                self.control.close()
                os.setsid()  # its own process group: a kill takes what the plugin started too
                _die_with(os.getppid())
                serve(socket.socket(fileno=fd))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                # Threads the plugin left running must not keep the worker alive.
                os._exit(0)
        os.close(fd)
        self.running.add(pid)
        return pid

    def _reap(self, only: int | None = None, wait: float = 5.0) -> None:
        """Collect the status of ended workers (of ``only``, waiting up to ``wait`` for it)."""
        deadline = time.monotonic() + wait
        while True:
            for pid in list(self.running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.running.discard(pid)
                    self.ended[pid] = os.waitstatus_to_exitcode(status)
            if only is None or only not in self.running or time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def main(argv: list[str]) -> int:
    control, parent = socket.socket(fileno=int(argv[1])), int(argv[2])
    _die_with(parent)
    # SIGTERM and Ctrl-C are the exporter's to handle (systemd sends SIGTERM to every process of the
    # service): workers end when the exporter stops them, or with the exporter.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [worker %(process)d]: "
                                                   "%(message)s")
    # What every worker shares stays shared: the collector never touches these objects in a child.
    gc.freeze()
    Zygote(control).loop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
