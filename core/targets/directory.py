"""The shared ``targets`` service: where the NFS servers and object store are.

Every plugin that measures or probes NFS servers or the object store asks
this one directory, so they all agree on the set of targets (the seed had
three discovery routines that disagreed). Discovery runs at start; then one
background thread sleeps in poll() until the host's mount table changes
(the kernel signals it on ``HOST_PROC_PATH/1/mounts``) or a configured timer
is due: ``nfs_mount_refresh_interval`` re-resolves the NFS server names (and
re-reads a mount table that gives no change notification),
``objstore_refresh_interval`` the object-store FQDN. With mounts by IP and
no names to resolve, an idle exporter's refresh thread never wakes. A scrape
only reads the last snapshot. A failed lookup keeps the last good answer.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crusoe_metrics_exporter.contract import Sample
from crusoe_metrics_exporter.files import DEFAULT_READ_LIMIT, read_limited
from crusoe_metrics_exporter.problems import LogBudget
from crusoe_metrics_exporter.targets.addresses import family_of, normalize, sort_key
from crusoe_metrics_exporter.targets.dns import CountingResolver, DnsStats, Resolver, system_resolver
from crusoe_metrics_exporter.targets.model import NfsMount, NfsServer, ObjstoreEndpoint
from crusoe_metrics_exporter.targets.mounts import (
    MountLine,
    addr_options,
    nfs_lines,
    parse_mounts,
    remote_ports,
    server_part,
)
from crusoe_metrics_exporter.targets.mountwatch import MountTableWatch, Wake
from crusoe_metrics_exporter.targets.volumes import volume_id, volume_pattern

if TYPE_CHECKING:
    from crusoe_metrics_exporter.targets.service import TargetOptions

log = logging.getLogger(__name__)

#: Least seconds between two re-reads triggered by mount changes: a burst (a
#: Kubernetes pod's volumes mounted one after another) costs one or two
#: re-reads, not one per mount.
MIN_CHANGE_GAP = 1.0


def _hostname(text: str) -> str:
    """One spelling per name, so one server is one DNS label value and one lookup."""
    return text.strip().lower().rstrip(".")


class _ServerBuilder:
    """Accumulates what one refresh learns about each server address."""

    def __init__(self) -> None:
        self.names: dict[str, set[str]] = {}
        self.volumes: dict[str, set[str]] = {}

    def add(self, address: str, name: str | None = None, volume: str | None = None) -> None:
        self.names.setdefault(address, set())
        self.volumes.setdefault(address, set())
        if name:
            self.names[address].add(name)
        if volume:
            self.volumes[address].add(volume)

    def build(self, ports: tuple[int, ...]) -> tuple[NfsServer, ...]:
        return tuple(
            NfsServer(
                address=a,
                family=family_of(a),
                ports=ports,
                volumes=tuple(sorted(self.volumes[a])),
                names=tuple(sorted(self.names[a])),
            )
            for a in sorted(self.names, key=sort_key)
        )


class TargetDirectory:
    """Discovered NFS servers, NFS mounts and object-store endpoints.

    Built by the ``targets`` service (``ctx.targets``). Call the
    accessors from a plugin's ``start``: the first call runs discovery
    synchronously (DNS included) and starts the background refresh thread.
    """

    def __init__(
        self,
        options: TargetOptions,
        host_proc: Path,
        resolver: Resolver | None = None,
        mounts_path: Path | None = None,
    ) -> None:
        self._options = options
        self._mounts_path = mounts_path or host_proc / "1" / "mounts"
        self.dns_stats = DnsStats()
        self._resolver = CountingResolver(resolver or system_resolver, self.dns_stats)

        self._lock = threading.Lock()
        self._nfs_servers: tuple[NfsServer, ...] = ()
        self._nfs_mounts: tuple[NfsMount, ...] = ()
        self._objstore: tuple[ObjstoreEndpoint, ...] = ()
        self._last_mount_lines: list[MountLine] | None = None
        # Whether the last NFS refresh looked up a host name (configured or
        # in a mount): only then does the NFS timer run while the mount
        # table is watched, since DNS changes give no notification.
        self._nfs_names_in_use = False
        #: Times the mount table was read, and times the refresh thread woke
        #: up (for tests and the idle benchmark: nothing changes, nothing wakes).
        self.mount_table_reads = 0
        self.wakeups = 0
        self._warned: set[str] = set()
        #: Per-name lookups and unreadable files repeat every refresh; thousands of names must not flood the log.
        self._repeats = LogBudget(log, "target discovery: repeated problems", burst=10, interval=300.0)

        self._subscribers: list[Callable[[], None]] = []
        self._start_lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: MountTableWatch | None = None

    # -- configuration views ---------------------------------------------
    @property
    def objstore_fqdn(self) -> str:
        """The configured object-store host name ("" when unset or an IP literal)."""
        fqdn = _hostname(self._options.objstore_endpoint_fqdn)
        return "" if normalize(fqdn) is not None else fqdn

    @property
    def objstore_configured(self) -> bool:
        return bool(self._options.objstore_endpoint_fqdn.strip() or self._options.objstore_endpoint_ips)

    @property
    def nfs_ports(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self._options.nfs_target_ports))

    @property
    def objstore_ports(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self._options.objstore_endpoint_ports))

    @property
    def volume_pattern(self) -> re.Pattern[str] | None:
        """The pattern taking the volume id from an NFS device; None when volume ids are off."""
        return volume_pattern(self._options.nfs_enable_volume_id, self._options.nfs_volume_id_pattern)

    # -- snapshot accessors ----------------------------------------------
    def nfs_servers(self) -> tuple[NfsServer, ...]:
        self.start()
        with self._lock:
            return self._nfs_servers

    def nfs_mounts(self) -> tuple[NfsMount, ...]:
        self.start()
        with self._lock:
            return self._nfs_mounts

    def objstore_endpoints(self) -> tuple[ObjstoreEndpoint, ...]:
        self.start()
        with self._lock:
            return self._objstore

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the refresh thread) whenever the targets change."""
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def collect(self) -> list[Sample]:
        """The DNS metrics (``DNS_METRICS``), for the exporter's scrape."""
        return self.dns_stats.samples()

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Discover once (synchronously), then keep refreshing in the background. Idempotent."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
            # Watched before the first read, so a mount made in between is
            # still signalled.
            self._watch = MountTableWatch(self._mounts_path)
            # Guarded: whatever goes wrong, the background thread must still
            # start so a later refresh can succeed.
            changed = self._guarded(self._refresh_nfs)
            changed = self._guarded(self._refresh_objstore) or changed
            if changed:
                self._notify()
            self._thread = threading.Thread(target=self._run, name="targets-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        if self._watch is not None and (thread is None or not thread.is_alive()):
            self._watch.close()  # the thread closes it too on its way out; closing twice is harmless

    def refresh_now(self) -> bool:
        """Re-read mounts and re-resolve names now; returns whether anything changed."""
        changed = self._refresh_nfs()
        changed = self._refresh_objstore() or changed
        if changed:
            self._notify()
        return changed

    # -- refresh -----------------------------------------------------------
    def _run(self) -> None:
        watch = self._watch
        assert watch is not None  # made by start() before the thread
        try:
            self._refresh_loop(watch)
        finally:
            watch.close()

    def _refresh_loop(self, watch: MountTableWatch) -> None:
        nfs_every = self._options.nfs_mount_refresh_interval
        obj_every = self._options.objstore_refresh_interval
        # Literal object-store IPs never change; only a name needs re-resolving.
        if not self.objstore_fqdn:
            obj_every = 0.0
        last_nfs = time.monotonic()
        next_obj = last_nfs + obj_every if obj_every > 0 else math.inf
        change_pending = False
        while not self._stop.is_set():  # stop() before start() made the watch has no pipe to write to
            # The NFS timer only covers what no notification tells: host
            # names (re-resolved) and a mount table that cannot be watched.
            timed = nfs_every > 0 and (self._nfs_names_in_use or not watch.watching)
            next_nfs = last_nfs + nfs_every if timed else math.inf
            if change_pending:
                next_nfs = min(next_nfs, last_nfs + MIN_CHANGE_GAP)
            due = min(next_nfs, next_obj)
            # While a re-read is owed, further changes need no wake-up: that
            # re-read sees them.
            wake = watch.wait(None if math.isinf(due) else max(0.0, due - time.monotonic()),
                              table=not change_pending)
            self.wakeups += 1
            if wake is Wake.STOPPED:
                return
            now = time.monotonic()
            if wake is Wake.CHANGED:
                change_pending = True
            changed = False
            if (change_pending and now >= last_nfs + MIN_CHANGE_GAP) or now >= next_nfs:
                change_pending = False
                watch.consume()
                changed = self._guarded(self._refresh_nfs) or changed
                last_nfs = time.monotonic()
            if now >= next_obj:
                changed = self._guarded(self._refresh_objstore) or changed
                next_obj = time.monotonic() + obj_every
            if changed:
                self._notify()

    def _guarded(self, refresh: Callable[[], bool]) -> bool:
        try:
            return refresh()
        except Exception as exc:  # the refresh thread must survive anything
            # One line for the operator; the traceback only at debug level.
            log.error("target discovery: refresh failed (%s: %s); keeping the previous targets",
                      type(exc).__name__, exc)
            log.debug("target discovery: refresh failure", exc_info=True)
            return False

    def _notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback()
            except Exception as exc:  # one subscriber must not break the others
                log.error("target discovery: change callback %s raised %s: %s",
                          getattr(callback, "__qualname__", callback), type(exc).__name__, exc)
                log.debug("target discovery: callback failure", exc_info=True)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _read_mount_lines(self) -> list[MountLine]:
        self.mount_table_reads += 1
        try:
            content = read_limited(self._mounts_path)
            if content.truncated and self._last_mount_lines is not None:
                # Cut at the limit: not a mount table to trust over the last whole one.
                raise OSError(errno.EFBIG, f"larger than {DEFAULT_READ_LIMIT} bytes", str(self._mounts_path))
        except OSError as exc:
            if self._last_mount_lines is not None:
                self._repeats.warning("target discovery: cannot read %s (%s); keeping the previous mounts",
                                      self._mounts_path, exc.strerror or exc)
                return self._last_mount_lines
            self._warn_once(f"mounts:{self._mounts_path}", "target discovery: cannot read %s (%s); no NFS mounts known",
                            self._mounts_path, exc.strerror or exc)
            return []
        if content.truncated:
            self._warn_once(f"truncated:{self._mounts_path}", "target discovery: %s is larger than %d bytes; only "
                            "the mounts in its beginning are known", self._mounts_path, DEFAULT_READ_LIMIT)
        # "replace", not "surrogateescape": a server name or volume id taken
        # from a non-UTF-8 device ends up in label values (DNS host,
        # volume_id), and a lone surrogate cannot be encoded by the
        # exposition, which would fail every scrape. nfs_stats decodes
        # mountstats the same way, so both derive the same volume id.
        lines, malformed = parse_mounts(content.data.decode("utf-8", "replace"))
        if malformed:
            log.debug("target discovery: %d malformed lines in %s skipped", malformed, self._mounts_path)
        self._last_mount_lines = lines
        return lines

    def _refresh_nfs(self) -> bool:
        self._repeats.flush()
        ports = self.nfs_ports
        pattern = self.volume_pattern
        resolved: dict[str, tuple[str, ...]] = {}

        def lookup(name: str) -> tuple[str, ...]:
            # One lookup per name per refresh, however many mounts share it.
            if name not in resolved:
                addresses, error = self._resolver.resolve("nfs", name)
                if error is not None:
                    self._repeats.warning("target discovery: cannot resolve NFS server %r (%s)%s", name, error,
                                          "; keeping its last addresses" if addresses else "")
                resolved[name] = addresses
            return resolved[name]

        servers = _ServerBuilder()
        for entry in self._options.nfs_server_ips:
            norm = normalize(entry)
            if norm is not None:
                servers.add(norm[0])
                continue
            name = _hostname(entry)
            for address in lookup(name):
                servers.add(address, name=name)

        mounts: list[NfsMount] = []
        for line in nfs_lines(self._read_mount_lines()):
            mount = self._mount_targets(line, lookup, pattern)
            mounts.append(mount)
            # Every address of a mount made by host name (resolved, addr=,
            # remoteports=) is reached under that name.
            mount_name = None if normalize(mount.server) is not None else mount.server
            for address in mount.addresses:
                servers.add(address, name=mount_name, volume=mount.volume_id)

        self._nfs_names_in_use = bool(resolved)
        new_servers = servers.build(ports)
        new_mounts = tuple(mounts)
        with self._lock:
            changed = (new_servers, new_mounts) != (self._nfs_servers, self._nfs_mounts)
            self._nfs_servers, self._nfs_mounts = new_servers, new_mounts
        if changed:
            log.info("target discovery: %d NFS servers from %d NFS mounts and %d configured entries",
                     len(new_servers), len(new_mounts), len(self._options.nfs_server_ips))
        return changed

    def _mount_targets(self, line: MountLine, lookup: Callable[[str], tuple[str, ...]], pattern: Any) -> NfsMount:
        host = server_part(line.device)
        addresses: list[str] = []
        norm = normalize(host) if host else None
        if norm is not None:
            host = norm[0]
            addresses.append(host)
        elif host:
            host = _hostname(host)
            addresses.extend(lookup(host))
        else:
            self._warn_once(f"device:{line.device}", "target discovery: NFS mount %s has no server in device %r",
                            line.mount_point, line.device)
        good, bad = addr_options(line.options)
        addresses.extend(good)
        for value in bad:
            self._warn_once(f"addr:{value}", "target discovery: ignoring addr=%r of %s: not an IP address",
                            value, line.mount_point)
        rp = remote_ports(line.options)
        if rp is not None:
            # remoteports=dns means "every address of the server name", which
            # the server part's own lookup above already gave.
            addresses.extend(rp.addresses)
            for part in rp.invalid:
                self._warn_once(f"remoteports:{part}", "target discovery: ignoring remoteports part %r of %s: "
                                "expected dns, an IP or an IPv4 range of at most 256 addresses", part, line.mount_point)
        unique = tuple(sorted(dict.fromkeys(addresses), key=sort_key))
        return NfsMount(
            device=line.device,
            mount_point=line.mount_point,
            server=host,
            addresses=unique,
            volume_id=volume_id(line.device, pattern),
            fstype=line.fstype,
        )

    def _refresh_objstore(self) -> bool:
        ports = self.objstore_ports
        fqdn_setting = self._options.objstore_endpoint_fqdn.strip()
        endpoints: list[ObjstoreEndpoint] = []
        if fqdn_setting:
            literal = normalize(fqdn_setting)
            if literal is not None:
                endpoints.append(ObjstoreEndpoint(literal[0], literal[1], ports, ""))
            else:
                fqdn = _hostname(fqdn_setting)
                addresses, error = self._resolver.resolve("objectstore", fqdn)
                if error is not None:
                    self._repeats.warning("target discovery: cannot resolve object store %r (%s)%s", fqdn, error,
                                          "; keeping its last addresses" if addresses else "")
                endpoints.extend(ObjstoreEndpoint(a, family_of(a), ports, fqdn) for a in addresses)
                if not addresses and self._options.objstore_endpoint_ips:
                    # The Go exporter dropped the literal list once a name was
                    # set or derived from NODE_NAME, even when the name never
                    # resolved; the list is the fallback until it does.
                    self._warn_once(f"objfallback:{fqdn}", "target discovery: object store %r has no address; "
                                    "using OBJSTORE_ENDPOINT_IPS until it resolves", fqdn)
                    endpoints.extend(self._literal_objstore_endpoints(ports))
        else:
            endpoints.extend(self._literal_objstore_endpoints(ports))
        unique = tuple(sorted(dict.fromkeys(endpoints), key=lambda e: sort_key(e.address)))
        with self._lock:
            changed = unique != self._objstore
            self._objstore = unique
        return changed

    def _literal_objstore_endpoints(self, ports: tuple[int, ...]) -> list[ObjstoreEndpoint]:
        endpoints = []
        for entry in self._options.objstore_endpoint_ips:
            norm = normalize(entry)
            if norm is None:
                self._warn_once(f"objip:{entry}", "target discovery: ignoring OBJSTORE_ENDPOINT_IPS entry %r: "
                                "not an IP address (set OBJSTORE_ENDPOINT_FQDN for a name)", entry)
                continue
            endpoints.append(ObjstoreEndpoint(norm[0], norm[1], ports, ""))
        return endpoints
