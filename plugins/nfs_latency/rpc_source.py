"""The RPC-layer source of nfs_latency: per-RPC figures per NFS mount and procedure.

Kernel side (``rpc_latency.c``): counts and histograms per (RPC client,
generation, procedure), from ``sunrpc:rpc_stats_latency``. This side maps
each client to the NFS mount it serves and folds the kernel's cumulative
values into monotonic per-label totals.

Client -> mount: an NFS superblock (``major:minor`` in mountinfo) has its own
RPC client, cloned at mount time, whose per-procedure totals are what
mountstats prints for that mount. The client is identified once per
superblock by the discovery probe (``rpc_probe``); two mount points of one
superblock share it. Superblocks that appear are probed on the worker
thread (never inside a scrape); a superblock whose mounts are gone keeps its
client's mapping until the kernel frees the client (``rpc_clnt_free``),
because a lazily unmounted filesystem can still carry traffic; the final
values are folded and the kernel entries deleted then.

The sunrpc module may be loaded only when the first NFS mount appears, long
after the exporter started: until its tracepoints exist the source is
"pending", and the worker looks again when that mount appears.

The worker sleeps until something tells it to look (a mount change reported
by target discovery, a client seen in a scrape that no mount is known to
use, stop); it wakes on a timer only while a retry is owed (a superblock
whose probe failed, a program that failed to load), so an idle exporter's
worker never wakes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Accumulator, Vector, add
from crusoe_metrics_exporter.plugins._tcptrace.buckets import bucket_function_c
from crusoe_metrics_exporter.plugins.nfs_latency import NfsLatencyOptions
from crusoe_metrics_exporter.plugins.nfs_latency import rpc_parser as rp
from crusoe_metrics_exporter.plugins.nfs_latency.rpc_probe import ProbeRunner
from crusoe_metrics_exporter.sdk import (
    BpfSpec,
    BpfUnavailable,
    HistogramValue,
    PluginContext,
    ProgramSpec,
    Sample,
    Tracepoint,
    read_limited,
    read_text,
    tracepoint_exists,
)

SOURCE = Path(__file__).with_name("rpc_latency.c")
ERRORS = "nfs_latency_collection_errors_total"

#: (role, sunrpc tracepoint, fields the program reads, required). Only the
#: first is needed; the others add errors, retransmissions and client-id reuse
#: where the kernel has them with these fields (bcc builds the argument struct
#: from the running kernel's format, so a missing field would fail the whole
#: object: such a program is left out instead).
PROGRAMS: tuple[tuple[str, str, frozenset[str], bool], ...] = (
    ("rpc_stats", "rpc_stats_latency",
     frozenset({"task_id", "client_id", "procname", "backlog", "rtt", "execute"}), True),
    ("rpc_errors", "rpc_task_end", frozenset({"task_id", "client_id", "status"}), False),
    ("rpc_retransmits", "xprt_retransmit", frozenset({"client_id", "procname"}), False),
    ("rpc_clients", "rpc_clnt_free", frozenset({"client_id"}), False),
)
TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_FIELD = re.compile(r"field:[^;]*?\b(\w+)(\[\d*\])?;")

#: After the RPC-layer program failed to load, how long until it is tried again.
LOAD_RETRY_SECONDS = 30.0
#: A superblock whose probe failed is tried again after this long.
PROBE_RETRY_SECONDS = 60.0


def tracepoint_fields(event: str) -> frozenset[str]:
    """Field names of ``sunrpc:<event>`` from its tracefs format (empty when the kernel has no such event)."""
    for root in TRACEFS_ROOTS:
        try:
            text = read_text(root / "events" / "sunrpc" / event / "format")
        except OSError:
            continue
        return frozenset(m.group(1) for m in _FIELD.finditer(text))
    return frozenset()


def rpc_layer_available() -> bool:
    """Whether the kernel has sunrpc's per-RPC tracepoint now, with the fields the program reads."""
    if not tracepoint_exists("sunrpc", "rpc_stats_latency"):
        return False
    _, event, fields, _ = PROGRAMS[0]
    return fields <= tracepoint_fields(event)


def build_spec(plugin: str, capacity: int) -> BpfSpec:
    present = [(role, event) for role, event, fields, required in PROGRAMS
               if required or fields <= tracepoint_fields(event)]
    source = (
        bucket_function_c(rp.RPC_BUCKETS, "rpc_bucket")
        + bucket_function_c(rp.SEED_BUCKETS, "seed_bucket")
        + read_text(SOURCE)
    )
    defines = {
        "RPC_SLOTS": rp.RPC_SLOTS,
        "SEED_SLOTS": rp.SEED_SLOTS,
        "RPC_MAX_ENTRIES": capacity,
        "RPC_MAX_CLIENTS": rp.MAX_CLIENT_IDS,
    }
    return BpfSpec(
        name=f"{plugin}_rpc",
        source=source,
        cflags=tuple(f"-D{k}={v}" for k, v in sorted(defines.items())),
        programs=tuple(
            ProgramSpec(role, (Tracepoint("sunrpc", event, f"tracepoint__sunrpc__{event}"),))
            for role, event in present
        ),
    )


@dataclass
class _Mapped:
    """A superblock whose client is known."""

    client: rp.ClientKey
    mount_ids: frozenset[int]


@dataclass
class _Failed:
    mount_ids: frozenset[int]
    retry_at: float
    problem: str


@dataclass
class _Mapping:
    """Client -> labels, kept until the client is freed and its last values are folded."""

    #: ``(protocol, volume_id)`` for the Go exporter's families.
    go_key: tuple[str, str]
    volume: str


@dataclass
class RpcState:
    """Everything the worker and the scrape share (guarded by RpcSource._lock)."""

    supers: dict[str, rp.Superblock] = field(default_factory=dict)
    by_dev: dict[str, _Mapped] = field(default_factory=dict)
    failed: dict[str, _Failed] = field(default_factory=dict)
    clients: dict[rp.ClientKey, _Mapping] = field(default_factory=dict)


class RpcSource:
    def __init__(self, ctx: PluginContext[NfsLatencyOptions], go_acc: Accumulator, operations: Iterable[str] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.log: logging.Logger = ctx.log
        self._lock = threading.Lock()
        self._clock = clock
        #: ``None`` exports every procedure.
        self._operations = None if operations is None else frozenset(o.upper() for o in operations)
        self._capacity = ctx.options.rpc_capacity
        self._probe_timeout = ctx.options.probe_timeout
        self._pattern = ctx.targets.volume_pattern
        self._label_unmatched = ctx.options.unmatched_mounts == "export"
        self._ops_acc = Accumulator(rp.RPC_WIDTH, clock=clock)
        self._go_acc = go_acc
        self._state = RpcState()
        self._loaded: Any = None
        self._problem = "not started"
        #: The program failed to load (not merely pending): tried again after LOAD_RETRY_SECONDS.
        self._load_failed = False
        self._reported_full = 0
        self._prober = ProbeRunner()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_active: Callable[[], None] | None = None
        self._go_seen: set[Hashable] = set()
        self._unmapped_seen: set[rp.ClientKey] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, on_active: Callable[[], None]) -> None:
        """Start the worker; ``on_active`` runs once, when the kernel program is attached."""
        self._on_active = on_active
        # Synchronously when the kernel already has the tracepoints, so that
        # the first scrape (and a one-shot ``collect``) sees every mount.
        try:
            self._try_load()
            if self._loaded is not None:
                self.refresh()
        except Exception:
            self.log.warning("nfs_latency RPC source: first refresh failed", exc_info=True)
            self.ctx.errors.inc(ERRORS)
        self._thread = threading.Thread(target=self._run, name=f"{self.ctx.plugin}-rpc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self._probe_timeout + 5.0)
        with self._lock:
            loaded, self._loaded = self._loaded, None
        if loaded is not None:
            self.ctx.ebpf.release(self.ctx.plugin, loaded)

    def poke(self) -> None:
        """Something changed (mounts): look again soon, on the worker."""
        self._wake.set()

    @property
    def active(self) -> bool:
        return self._loaded is not None

    @property
    def problem(self) -> str:
        return self._problem

    # -- worker ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(self.idle_wait())
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._loaded is None:
                    self._try_load()
                if self._loaded is not None:
                    self.refresh()
            except Exception:  # the worker must survive anything; the next poke or retry tries again
                self.log.warning("nfs_latency RPC source: refresh failed", exc_info=True)
                self.ctx.errors.inc(ERRORS)

    def idle_wait(self) -> float | None:
        """Seconds the worker may sleep unless poked: until the next owed retry, None when none is owed.

        Everything else is announced: the sunrpc module comes with the first
        NFS mount and a new superblock with a mount change (both reported by
        target discovery, which pokes), a superblock remounted where the
        discovery saw no change by its client's first RPCs (``fold`` pokes).
        """
        if self._loaded is None:
            return LOAD_RETRY_SECONDS if self._load_failed else None
        with self._lock:
            retries = [failed.retry_at for failed in self._state.failed.values()]
        return max(0.0, min(retries) - self._clock()) if retries else None

    def _try_load(self) -> None:
        if not rpc_layer_available():
            self._problem = "pending: the kernel has no sunrpc:rpc_stats_latency (sunrpc module not loaded yet)"
            self._load_failed = False
            return
        try:
            loaded = self.ctx.ebpf.load(self.ctx.plugin, build_spec(self.ctx.plugin, self._capacity))
        except BpfUnavailable as exc:
            self._problem = f"failed: {exc}"
            self.log.warning("nfs_latency: the RPC-layer program did not load (%s); NFS latency stays TCP-level",
                             exc)
            # Not retried in a tight loop: the next try is LOAD_RETRY_SECONDS away.
            self._load_failed = True
            return
        with self._lock:
            self._loaded = loaded
        self._problem = ""
        self._load_failed = False
        self.ctx.details.update({f"rpc.{k}": v for k, v in loaded.details().items()})
        self.log.info("nfs_latency: RPC-layer source active (per-RPC latency per mount and procedure)")
        if self._on_active is not None:
            self._on_active()

    def refresh(self) -> None:
        """Read mountinfo and probe superblocks whose client is not known yet."""
        path = self.ctx.host_proc / "1" / "mountinfo"
        try:
            text = read_limited(path).data.decode("utf-8", "replace")
        except OSError as exc:
            self.log.warning("nfs_latency: cannot read %s: %s", path, exc.strerror or exc)
            self.ctx.errors.inc(ERRORS)
            return
        mounts, bad = rp.parse_mountinfo(text)
        if bad:
            self.ctx.errors.inc(ERRORS, bad)
        supers = rp.nfs_superblocks(mounts, self._pattern, self._label_unmatched)
        with self._lock:
            state = self._state
            state.supers = supers
            for dev in list(state.by_dev):
                if dev not in supers:
                    del state.by_dev[dev]
            for dev in list(state.failed):
                if dev not in supers:
                    del state.failed[dev]
            todo = []
            for dev, sb in supers.items():
                mapped = state.by_dev.get(dev)
                # While one of the mounts it was probed through is still
                # there, the superblock (and so its client) is the same one.
                if mapped is not None and mapped.mount_ids & sb.mount_ids:
                    mapped.mount_ids = sb.mount_ids
                    self._label(mapped.client, sb)
                    continue
                failed = state.failed.get(dev)
                if failed is not None and failed.mount_ids == sb.mount_ids and self._clock() < failed.retry_at:
                    continue
                todo.append(sb)
        for sb in todo:
            if self._stop.is_set():
                return
            self._probe(sb)

    def _probe(self, sb: rp.Superblock) -> None:
        # The host's / (HOST_ROOT_PATH) when configured, else init's root through procfs.
        root = str(self.ctx.host_root or self.ctx.host_proc / "1" / "root")
        problems = []
        for mount_point in sb.mount_points:
            outcome = self._prober.probe(root.rstrip("/") + mount_point, sb.dev, self, self._probe_timeout)
            if outcome.client is not None:
                with self._lock:
                    self._state.by_dev[sb.dev] = _Mapped(outcome.client, sb.mount_ids)
                    self._state.failed.pop(sb.dev, None)
                    self._label(outcome.client, sb)
                self.log.info("nfs_latency: %s (%s) is served by RPC client %d", sb.label, sb.dev,
                              outcome.client.clid)
                return
            problems.append(outcome.problem)
        problem = "; ".join(problems)
        with self._lock:
            previous = self._state.failed.get(sb.dev)
            self._state.failed[sb.dev] = _Failed(sb.mount_ids, self._clock() + PROBE_RETRY_SECONDS, problem)
        if previous is None or previous.problem != problem:
            self.log.warning("nfs_latency: cannot tell which RPC client serves %s (%s): %s; retrying in %ds",
                             sb.label, sb.dev, problem, PROBE_RETRY_SECONDS)
        self.ctx.errors.inc(ERRORS)

    def _label(self, client: rp.ClientKey, sb: rp.Superblock) -> None:
        mapping = _Mapping((sb.protocol, sb.label), sb.label)
        self._state.clients[client] = mapping
        self._go_seen.add(mapping.go_key)

    def go_keys_seen(self) -> set[Hashable]:
        """Every ``(protocol, volume_id)`` this source has fed (the Go families' series it owns)."""
        with self._lock:
            return set(self._go_seen)

    # -- ProbeTracer: the probe's view of the kernel program ------------------------------------------------
    def arm(self, tid: int) -> None:
        self._map("probe").update(rp.U32.pack(0), rp.armed_probe(tid))

    def disarm(self) -> None:
        self._map("probe").update(rp.U32.pack(0), rp.armed_probe(0))

    def result(self) -> rp.ProbeResult:
        raw = self._map("probe").lookup(rp.U32.pack(0))
        if raw is None:
            raise OSError("probe map unreadable")
        return rp.parse_probe(raw)

    def _map(self, name: str) -> Any:
        loaded = self._loaded
        if loaded is None:
            raise OSError("the RPC program is not loaded")
        return loaded.map(name)

    # -- scrape ------------------------------------------------------------------------------------------------
    def fold(self) -> None:
        """Fold the kernel's values of mapped clients into the totals (the scrape thread, under the caller's lock)."""
        loaded = self._loaded
        if loaded is None:
            return
        stats = loaded.map("rpc_stats")
        generations = loaded.map("client_gen")
        gens: dict[int, int] = {}
        bad = 0
        ops: dict[str, Vector] = {}
        go: dict[str, Vector] = {}
        ops_key: dict[str, Hashable] = {}
        go_key: dict[str, Hashable] = {}
        dead_entries: list[tuple[bytes, str]] = []
        dead_clients: set[rp.ClientKey] = set()
        unmapped_live = False
        with self._lock:
            clients = dict(self._state.clients)
        for raw_key, raw_value in stats.items():
            try:
                entry = rp.parse_rpc_entry(raw_key, raw_value)
            except ValueError:
                bad += 1
                continue
            client = entry.client
            if client.clid not in gens:
                gens[client.clid] = rp.parse_generation(generations.lookup(rp.U32.pack(client.clid)))
            dead = client.gen < gens[client.clid]
            mapping = clients.get(client)
            reading = f"{client.clid}:{client.gen}:{entry.op}"
            if dead:
                dead_entries.append((raw_key, reading))
                dead_clients.add(client)
            if mapping is None:
                if not dead and client not in self._unmapped_seen:
                    # A client no mount is known to use: a mount the probe
                    # has not seen yet, or another program's (lockd, ...).
                    # Looked for once, not at every scrape.
                    self._unmapped_seen.add(client)
                    unmapped_live = True
                continue
            if self._operations is None or entry.op in self._operations:
                ops[reading] = entry.vector
                ops_key[reading] = (mapping.volume, entry.op.lower())
            client_reading = f"rpc:{client.clid}:{client.gen}"
            go[client_reading] = add(go.get(client_reading, (0,) * len(rp.go_vector(entry.vector))),
                                     rp.go_vector(entry.vector))
            go_key[client_reading] = mapping.go_key
        bad += self._ops_acc.fold(ops, lambda r: ops_key[r])
        bad += self._go_acc.fold(go, lambda r: go_key[r])
        # Dead clients: their last values are folded; nothing can add to them.
        for raw_key, _reading in dead_entries:
            stats.delete(raw_key)
        self._ops_acc.forget(r for _k, r in dead_entries)
        self._go_acc.forget(f"rpc:{c.clid}:{c.gen}" for c in dead_clients)
        if dead_clients:
            self._unmapped_seen -= dead_clients
            with self._lock:
                for c in dead_clients:
                    self._state.clients.pop(c, None)
        self._note_full(loaded)
        if bad:
            self.ctx.errors.inc(ERRORS, bad)
        if unmapped_live:
            self.poke()

    def _note_full(self, loaded: Any) -> None:
        raw = loaded.map("problems").lookup(rp.U32.pack(0))
        full = int.from_bytes(raw, "little") if raw is not None else 0
        if full > self._reported_full:
            self.log.warning("nfs_latency: %d RPCs not counted: rpc_capacity=%d (client, procedure) entries are "
                             "in use; raise it", full - self._reported_full, self._capacity)
            self.ctx.errors.inc(ERRORS, full - self._reported_full)
            self._reported_full = full

    def current_go_keys(self) -> set[Hashable]:
        """``(protocol, volume_id)`` of the mounted superblocks whose client is known."""
        with self._lock:
            return {m.go_key for dev, mapped in self._state.by_dev.items()
                    if (m := self._state.clients.get(mapped.client)) is not None}

    def samples(self, retention: float) -> list[Sample]:
        with self._lock:
            current_volumes = {m.volume for mapped in self._state.by_dev.values()
                               if (m := self._state.clients.get(mapped.client)) is not None}
        totals = self._ops_acc.totals_where(lambda k: isinstance(k, tuple) and k[0] in current_volumes, retention)
        out: list[Sample] = []
        for key, v in sorted(totals.items(), key=lambda kv: str(kv[0])):
            assert isinstance(key, tuple)
            labels = (str(key[0]), str(key[1]))
            out.append(Sample("nfs_rpc_rtt_seconds", labels,
                              HistogramValue(tuple(v[rp.RTT_HIST]), v[rp.RTT_NS] / 1e9)))
            out.append(Sample("nfs_rpc_execute_seconds", labels,
                              HistogramValue(tuple(v[rp.EXECUTE_HIST]), v[rp.EXECUTE_NS] / 1e9)))
            out.append(Sample("nfs_rpc_queue_seconds", labels,
                              HistogramValue(tuple(v[rp.QUEUE_HIST]), v[rp.QUEUE_NS] / 1e9)))
            out.append(Sample("nfs_rpc_errors_total", labels, float(v[rp.ERRORS])))
            out.append(Sample("nfs_rpc_retransmits_total", labels, float(v[rp.RETRANSMITS])))
        return out

    def mapping_snapshot(self) -> dict[str, tuple[int, int, str]]:
        """dev -> (client id, generation, volume label) of every mapped superblock (tests, diagnostics)."""
        with self._lock:
            return {dev: (m.client.clid, m.client.gen, self._state.clients[m.client].volume)
                    for dev, m in self._state.by_dev.items() if m.client in self._state.clients}

