"""The exporter's side of a worker plugin: spawn, requests with deadlines, limits, restarts with back-off.

:func:`start_in_worker` is what the host runs instead of the in-process
start for a worker plugin: it starts the worker, takes the plugin's
declaration from it, validates it and claims its metric names here,
resolves its settings here (a bad value fails the plugin with the one-line
error), and has the worker check support and start the plugin, each step
with its deadline. The result is a :class:`RemoteCollector` the runner
drives like any collector.

While the worker runs, the exporter watches it: a reply that does not come
within the deadline, a worker whose resident memory or thread count passes
its limit, a frame larger than the limit, or a worker that exits, is killed
(its whole process group) and the plugin is *failed* with the reason. A
worker lost after it started is started again after a back-off that doubles
from 1 s to 5 min and resets once it has stayed up for a while.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from crusoe_metrics_exporter.contract import ConfigOption, MetricSpec, PluginSpec, Sample
from crusoe_metrics_exporter.errors import ErrorCounters
from crusoe_metrics_exporter.files import read_text
from crusoe_metrics_exporter.hookspecs import PLUGIN_GROUP
from crusoe_metrics_exporter.host import (
    LOAD_TIMEOUT,
    SUPPORT_CHECK_TIMEOUT,
    MetricClaims,
    PluginRecord,
    Started,
    validate_spec,
)
from crusoe_metrics_exporter.isolation import protocol
from crusoe_metrics_exporter.naming import InvalidDeclaration
from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.runner import Rejection
from crusoe_metrics_exporter.schema import config_options, option
from crusoe_metrics_exporter.settings import Settings, resolve_plugin, typed_options

log = logging.getLogger(__name__)

WORKER_MODULE = "crusoe_metrics_exporter.isolation.worker"
#: The largest collect reply read (the rows of max_series_per_plugin series fit with room to spare).
FRAME_LIMIT = 48 * 1024 * 1024
#: How often a worker's memory and threads are looked at while the exporter waits for it.
WATCH_EVERY = 0.25
#: Restart back-off, seconds: doubled from the first to the last, reset after STABLE_AFTER.
BACKOFF_FIRST, BACKOFF_LAST, STABLE_AFTER = 1.0, 300.0, 600.0
#: How long a worker gets to stop cleanly before it is killed.
STOP_TIMEOUT = 5.0
_MIB = 1024 * 1024


class WorkerFailed(Exception):
    """The worker or the plugin in it failed in ``phase``; ``str()`` is the reason."""

    def __init__(self, phase: str, reason: str, where: str = "", lost: bool = True) -> None:
        super().__init__(reason)
        self.phase = phase
        self.where = where
        #: The worker is gone (killed or exited); False: the plugin raised and the worker lives on.
        self.lost = lost


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    max_threads: int
    series_limit: int
    #: A collect that has not answered after this long is a hang: the worker is killed.
    collect_hang: float
    start_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        core = settings.core
        return cls(
            memory_bytes=int(core["worker_memory_mib"]) * _MIB,
            max_threads=int(core["worker_max_threads"]),
            series_limit=int(core["max_series_per_plugin"]),
            collect_hang=max(30.0, 6 * float(core["collect_timeout"])),
            start_timeout=float(core["start_timeout"]),
        )


_LIVE: set[WorkerProcess] = set()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Kill every worker still running (exporter shutdown: starts still in progress included), then the zygote."""
    global _zygote
    with _LIVE_LOCK:
        workers = list(_LIVE)
    for worker in workers:
        worker.kill()
    with _ZYGOTE_LOCK:
        if _zygote is not None:
            _zygote.stop()
            _zygote = None


class WorkerProcess:
    """One worker process and the socket to it; one request at a time."""

    def __init__(self, rec: PluginRecord, limits: Limits) -> None:
        self.plugin = rec.name
        self.limits = limits
        self._lock = threading.Lock()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.zygote = zygote()
            self.pid = self.zygote.spawn(theirs)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self._closed = False
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            protocol.send(self.sock, {
                "plugin": rec.name, "distribution": rec.distribution, "entry_point": rec.entry_point,
                "group": PLUGIN_GROUP, "memory_bytes": limits.memory_bytes, "max_threads": limits.max_threads,
                "series_limit": limits.series_limit,
                "frame_limit": FRAME_LIMIT - _MIB,
            })
        except OSError:
            self.kill()
            raise

    def request(self, op: str, timeout: float, phase: str, **payload: Any) -> tuple[dict[str, Any], protocol.Rows]:
        """Send ``op``, wait for the reply; raises WorkerFailed (the worker is killed unless only the plugin failed)."""
        with self._lock:
            try:
                protocol.send(self.sock, {"op": op, **payload})
                reply, rows = self._wait(timeout, phase)
            except WorkerFailed:
                self.kill()
                raise
            except (OSError, protocol.ProtocolError) as exc:
                self.kill()
                raise WorkerFailed(phase, self._gone(f"{op}: {exc}")) from None
        if not reply.get("ok"):
            raise WorkerFailed(str(reply.get("phase") or phase), str(reply.get("reason") or "failed"),
                               str(reply.get("where") or ""), lost=False)
        return reply, rows

    def _wait(self, timeout: float, phase: str) -> tuple[dict[str, Any], protocol.Rows]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerFailed(phase, f"the worker did not answer within {timeout:g}s ({phase})")
            ready, _, _ = select.select([self.sock], [], [], min(WATCH_EVERY, remaining))
            self.check_limits(phase)
            if ready:
                try:
                    return protocol.receive_frame(self.sock, max(remaining, 1.0), FRAME_LIMIT)
                except TimeoutError:
                    raise WorkerFailed(phase, f"the worker did not finish its answer within {timeout:g}s") from None
                except protocol.FrameTooLarge as exc:
                    raise WorkerFailed(phase, f"the worker sent {exc}") from None
                except protocol.PeerGone:
                    raise WorkerFailed(phase, self._gone(phase)) from None

    def check_limits(self, phase: str) -> None:
        """Kill the worker (WorkerFailed) if its own memory or its thread count is past its limit."""
        private, threads = self.usage()
        if private > self.limits.memory_bytes:
            raise WorkerFailed(phase, f"the worker used {private // _MIB} MiB of its own, more than "
                                      f"worker_memory_mib={self.limits.memory_bytes // _MIB}")
        if threads > self.limits.max_threads:
            raise WorkerFailed(phase, f"the worker ran {threads} threads, more than worker_max_threads="
                                      f"{self.limits.max_threads}")

    def usage(self) -> tuple[int, int]:
        """(bytes of memory of its own, threads) of the worker; (0, 0) once it is gone.

        Its own: resident and not shared with the other workers (what the
        zygote loaded is shared, copy-on-write, and counted once by the
        kernel's memory accounting too).
        """
        try:
            rollup = read_text(f"/proc/{self.pid}/smaps_rollup")
            status = read_text(f"/proc/{self.pid}/status")
        except OSError:
            return 0, 0
        private = sum(int(line.split()[1]) * 1024 for line in rollup.splitlines()
                      if line.startswith(("Private_Clean:", "Private_Dirty:")))
        threads = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), 0)
        return private, threads

    def _gone(self, phase: str) -> str:
        try:
            code = self.zygote.status(self.pid, wait=1.0)
        except OSError:
            code = None
        if code is None:
            return f"the worker stopped answering ({phase})"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"the worker was killed by {name} during {phase}"
        return f"the worker exited with status {code} during {phase}"

    def stop(self) -> None:
        """Ask the plugin to stop, then make sure the process is gone."""
        with contextlib.suppress(WorkerFailed):
            self.request("stop", STOP_TIMEOUT, "stop")
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the worker's process group (by the zygote, which reaps it); idempotent."""
        with contextlib.suppress(OSError):  # a zygote that is gone took its workers with it
            self.zygote.kill(self.pid)
        self.sock.close()
        with _LIVE_LOCK:
            _LIVE.discard(self)


class Zygote:
    """The process every worker is forked from (see :mod:`.worker`), and the control socket to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        try:
            self.proc = _spawn([sys.executable, "-m", WORKER_MODULE, str(theirs.fileno()), str(os.getpid())],
                               pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=_stdout_target(),
                               env=env)
        except BaseException:
            self._sock.close()
            raise
        finally:
            theirs.close()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, sock: socket.socket) -> int:
        """A new worker serving ``sock``; its pid. OSError when the zygote is gone."""
        return int(self._ask({"op": "spawn"}, (sock.fileno(),))["pid"])

    def kill(self, pid: int) -> int | None:
        return self._status(self._ask({"op": "kill", "pid": pid}))

    def status(self, pid: int, wait: float = 0.0) -> int | None:
        """The worker's exit status (negative: the signal), or None while it runs."""
        return self._status(self._ask({"op": "status", "pid": pid, "wait": wait}))

    def stop(self) -> None:
        self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)

    def _ask(self, request: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        with self._lock:
            socket.send_fds(self._sock, [json.dumps(request).encode()], list(fds))
            self._sock.settimeout(30.0)
            data = self._sock.recv(4096)
        if not data:
            raise OSError("the worker zygote is gone")
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise OSError("the worker zygote answered nonsense")
        return answer

    @staticmethod
    def _status(answer: dict[str, Any]) -> int | None:
        status = answer.get("status")
        return status if isinstance(status, int) else None


_ZYGOTE_LOCK = threading.Lock()
_zygote: Zygote | None = None


def zygote() -> Zygote:
    """The running zygote, started on first use and again if it died."""
    global _zygote
    with _ZYGOTE_LOCK:
        if _zygote is None or not _zygote.alive:
            _zygote = Zygote()
        return _zygote


_SPAWN_QUEUE: queue.SimpleQueue[tuple[tuple[Any, ...], dict[str, Any], Future[subprocess.Popen[bytes]]]] = \
    queue.SimpleQueue()
_SPAWNER_LOCK = threading.Lock()
_spawner: threading.Thread | None = None


def _spawn(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` on one thread that lives as long as the exporter.

    The zygote asks the kernel to kill it when its parent dies
    (PR_SET_PDEATHSIG), and for the kernel the parent is the *thread* that
    forked it: a process forked by a plugin's start thread would be killed
    the moment that thread ends.
    """
    global _spawner
    with _SPAWNER_LOCK:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawn_forever, name="worker-spawner", daemon=True)
            _spawner.start()
    done: Future[subprocess.Popen[bytes]] = Future()
    _SPAWN_QUEUE.put((args, kwargs, done))
    return done.result()


def _spawn_forever() -> None:
    while True:
        args, kwargs, done = _SPAWN_QUEUE.get()
        try:
            done.set_result(subprocess.Popen(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that asked
            done.set_exception(exc)


def _stdout_target() -> int:
    """The exporter's stderr: what a plugin prints must never mix with ``collect``'s exposition on stdout."""
    try:
        return sys.__stderr__.fileno() if sys.__stderr__ is not None else subprocess.DEVNULL
    except (OSError, ValueError):
        return subprocess.DEVNULL


# -- the declaration ---------------------------------------------------------------------

def _declared_spec(name: str, declaration: Mapping[str, Any]) -> PluginSpec[Any]:
    """The worker's declaration as a PluginSpec the core can validate, render and configure; InvalidDeclaration."""
    try:
        metrics = tuple(MetricSpec(**{**m, "labels": tuple(m["labels"]), "buckets": tuple(m["buckets"])})
                        for m in declaration["metrics"])
        options = [ConfigOption(**{**o, "choices": tuple(o["choices"]),
                                   "default": tuple(o["default"]) if isinstance(o["default"], list) else o["default"]})
                   for o in declaration["options"]]
        description = str(declaration["description"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidDeclaration(f"the worker sent a declaration that is not one: {type(exc).__name__}: {exc}")\
            from None
    fields = [(o.name, Any, option(o.type, o.default, o.help, env=o.env, choices=o.choices, minimum=o.minimum,
                                   maximum=o.maximum)) for o in options]
    options_class = dataclasses.make_dataclass(f"{name}_options", fields, frozen=True) if fields else None

    def in_the_worker(*_: Any) -> Any:
        raise RuntimeError("a worker plugin runs in its worker")

    spec = PluginSpec(name=name, description=description, metrics=metrics, factory=in_the_worker,
                      check_support=in_the_worker, options=options_class)
    return validate_spec(spec, name)


def _settings_for(settings: Settings, name: str) -> dict[str, Any]:
    """What the worker needs of the resolved settings (JSON): the core, the services, this plugin's values."""
    prefix = f"plugins.{name}."
    return {"core": settings.core, "services": settings.services, "plugin": settings.plugin(name),
            "spellings": {k: v for k, v in settings.spellings.items() if k.startswith(prefix)}}


# -- starting ------------------------------------------------------------------------------

Until = Literal["declare", "check", "start"]


class Budget:
    """The time left of a worker's start: each step gets its own deadline, capped by what start_timeout leaves."""

    def __init__(self, total: float) -> None:
        self.total = total
        self.end = time.monotonic() + total

    def timeout(self, step: float, phase: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise WorkerFailed(phase, f"its start did not finish within start_timeout={self.total:g}s")
        return min(step, left)


def start_in_worker(rec: PluginRecord, settings: Settings, claims: MetricClaims, until: Until = "start") -> Started:
    """Load, validate, configure, check and start ``rec`` in a new worker; never raises for the plugin's fault.

    ``until`` stops short for the commands that only show plugins: after the
    declaration (``config show``: ``rec.spec`` and its settings are then
    known) or after the support check (``plugins``, ``doctor``: "active"
    means supported); the worker is then stopped.
    """
    limits = Limits.from_settings(settings)
    budget = Budget(limits.start_timeout)
    worker: WorkerProcess | None = None
    try:
        worker = WorkerProcess(rec, limits)
        if rec.spec is None:
            _declare(worker, rec, settings, claims, budget)
        else:  # declared by an earlier worker (a check before the start)
            worker.request("load", budget.timeout(LOAD_TIMEOUT, "load"), "load")
        snapshot = _settings_for(settings, rec.name)
        answer = None if until == "declare" else _check_and_start(worker, rec, snapshot, budget, until == "start")
        if answer is not None or until != "start":
            worker.stop()
            return answer or Started("active")
        log.info("plugin %s runs in worker process %d", rec.name, worker.pid)
        return Started("active", collector=RemoteCollector(rec, worker, snapshot, limits))
    except WorkerFailed as exc:
        if worker is not None:
            worker.kill()
        if rec.errors is not None and exc.phase == "start":
            rec.errors.core_failure("start")
        return Started("failed", str(exc), where=exc.where, phase=exc.phase)
    except OSError as exc:  # the worker could not even be started (out of processes, memory, file descriptors)
        if worker is not None:
            worker.kill()
        return Started("failed", f"cannot start a worker process: {exc.strerror or exc}", phase="load")


def _declare(worker: WorkerProcess, rec: PluginRecord, settings: Settings, claims: MetricClaims,
             budget: Budget) -> None:
    """The declaration from ``worker``, validated, its metric names claimed, its settings resolved; WorkerFailed."""
    declaration, _ = worker.request("load", budget.timeout(LOAD_TIMEOUT, "load"), "load")
    try:
        spec = _declared_spec(rec.name, declaration)
    except InvalidDeclaration as exc:
        raise WorkerFailed("validate", str(exc)) from None
    clash = claims.claim(rec, spec.metrics)
    if clash:
        raise WorkerFailed("validate", clash)
    rec.spec = spec
    rec.errors = ErrorCounters(rec.name, tuple(m.name for m in spec.metrics if m.error_counter))
    try:
        resolve_plugin(settings, rec.name, config_options(spec.options))
        rec.options = typed_options(settings, f"plugins.{rec.name}", spec.options)
    except SettingError as exc:
        raise WorkerFailed("options", str(exc)) from None


def _check_and_start(worker: WorkerProcess, rec: PluginRecord, snapshot: dict[str, Any], budget: Budget,
                     start: bool = True) -> Started | None:
    """Configure, check support and start in ``worker``; None once it started, else the outcome. WorkerFailed."""
    worker.request("configure", budget.timeout(LOAD_TIMEOUT, "options"), "options", settings=snapshot)
    reply, _ = worker.request("check", budget.timeout(SUPPORT_CHECK_TIMEOUT, "start"), "start")
    support = reply.get("support") or {}
    rec.details.update(_bounded(reply.get("details")))
    rec.details.update(_bounded(support.get("details")))
    if not support.get("supported"):
        return Started("unsupported", str(support.get("reason") or "not supported on this host"),
                       fix=str(support.get("fix") or ""))
    if not start:
        return None
    reply, _ = worker.request("start", budget.timeout(budget.total, "start"), "start")
    rec.details.update(_bounded(reply.get("details")))
    rec.details["worker_pid"] = str(worker.pid)
    return None


def _bounded(details: object) -> dict[str, str]:
    """A worker's details, as strings and bounded (a plugin could send anything)."""
    if not isinstance(details, dict):
        return {}
    return {str(k)[:64]: str(v)[:512] for k, v in list(details.items())[:64]}


# -- collecting ------------------------------------------------------------------------------

class WorkerDown(RuntimeError):
    """The worker is gone and not restarted yet; ``str()`` says why and when it comes back."""


class RemoteCollector:
    """A worker plugin's collector, as the runner sees it; restarts the worker when it is lost."""

    def __init__(self, rec: PluginRecord, worker: WorkerProcess, snapshot: dict[str, Any], limits: Limits) -> None:
        self._rec = rec
        self._worker: WorkerProcess | None = worker
        self._snapshot = snapshot
        self._limits = limits
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._down = ""
        self._backoff = BACKOFF_FIRST
        self._up_since = time.monotonic()
        self._reported_errors: dict[str, int] = {}
        self._rejections: dict[tuple[str, str], Rejection] = {}

    # -- Collector --------------------------------------------------------------------------
    def start(self) -> None:
        """Nothing: the plugin started in its worker before this object existed."""

    def collect(self) -> Iterable[Sample]:
        worker = self._worker
        if worker is None:
            raise WorkerDown(self._down)
        try:
            meta, rows = worker.request("collect", self._limits.collect_hang, "collect")
        except WorkerFailed as exc:
            if exc.lost:
                self._lost(worker, str(exc))
            raise
        self._apply(meta)
        if time.monotonic() - self._up_since > STABLE_AFTER:
            self._backoff = BACKOFF_FIRST
        return self._samples(rows, _count(meta.get("over")))

    def _samples(self, rows: protocol.Rows, over: int) -> Iterator[Sample]:
        """The frame's samples as the runner validates them, then what was left out, as rejections."""
        counts = protocol.Decoded()
        try:
            yield from protocol.decode_rows(rows, self._limits.series_limit, counts)
        finally:
            over += counts.beyond
            if over:
                self._rejections[("?", "series_limit")] = Rejection("?", "series_limit", over, (), "")
            if counts.broken:
                self._rejections[("?", "not_a_sample")] = Rejection("?", "not_a_sample", counts.broken, (), "")

    def take_rejections(self) -> dict[tuple[str, str], Rejection]:
        """Samples dropped before they reached the runner (past the limits in the worker, or unreadable)."""
        taken, self._rejections = self._rejections, {}
        return taken

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    # -- internals -------------------------------------------------------------------------------
    def _apply(self, meta: Mapping[str, Any]) -> None:
        errors = meta.get("errors")
        if isinstance(errors, dict) and self._rec.errors is not None:
            declared = set(self._rec.errors.metric_totals())
            for name, total in errors.items():
                if name in declared and isinstance(total, int) and not isinstance(total, bool):
                    delta = total - self._reported_errors.get(name, 0)
                    if delta > 0:
                        self._rec.errors.inc(name, delta)
                    self._reported_errors[name] = total
        self._rec.details.update(_bounded(meta.get("details")))

    def _lost(self, worker: WorkerProcess, reason: str) -> None:
        with self._lock:
            if self._worker is not worker:
                return
            self._worker = None
            delay = self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_LAST)
            self._down = f"{reason}; restarting in {delay:g}s"
        self._rec.fail("collect", self._down)
        threading.Thread(target=self._restart, args=(delay,), name=f"restart-{self._rec.name}",
                         daemon=True).start()

    def _restart(self, delay: float) -> None:
        if self._stopping.wait(delay):
            return
        worker: WorkerProcess | None = None
        budget = Budget(self._limits.start_timeout)
        try:
            worker = WorkerProcess(self._rec, self._limits)
            declaration, _ = worker.request("load", budget.timeout(LOAD_TIMEOUT, "load"), "load")
            try:
                if _declared_spec(self._rec.name, declaration).metrics != (self._rec.spec.metrics if self._rec.spec
                                                                          else ()):
                    raise WorkerFailed("validate", "the plugin declares other metrics than when it first started")
            except InvalidDeclaration as exc:
                raise WorkerFailed("validate", str(exc)) from None
            answer = _check_and_start(worker, self._rec, self._snapshot, budget)
            if answer is not None:
                raise WorkerFailed("start", f"after a restart the plugin is {answer.state}: {answer.reason}")
        except (WorkerFailed, OSError) as exc:
            if worker is not None:
                worker.kill()
            self._lost_again(str(exc))
            return
        with self._lock:
            if self._stopping.is_set():
                worker.stop()
                return
            self._worker = worker
            self._reported_errors = {}
            self._up_since = time.monotonic()
            self._down = ""
        self._rec.state, self._rec.reason, self._rec.failed_phase = "active", "", ""
        log.info("plugin %s: worker restarted (process %d)", self._rec.name, worker.pid)

    def _lost_again(self, reason: str) -> None:
        with self._lock:
            delay = self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_LAST)
            self._down = f"restart failed: {reason}; next attempt in {delay:g}s"
        self._rec.fail("start", self._down)
        threading.Thread(target=self._restart, args=(delay,), name=f"restart-{self._rec.name}",
                         daemon=True).start()


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
