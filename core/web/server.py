"""The HTTP server: one asyncio event loop, bounded in connections, time and memory.

Every connection is a coroutine on the main thread's event loop; blocking
work (a collect and its render) runs on a short-lived daemon thread and is
shared by concurrent scrapers (``endpoints.SharedExposition``). With nobody
connected the loop sleeps in ``epoll_wait`` without a timeout: no polling.

Bounds, so that no client can stop a legitimate scrape:

* **connections**: at most ``max_connections`` (and never more than the
  open-file limit leaves room for, after it was raised to its hard limit).
  The server accepts connections itself, so the limit holds before a
  connection costs a file descriptor. At the limit, a new connection closes
  the one that has been idle longest (waiting for a request, or still
  sending its head); when every connection is busy answering, new ones wait
  in the listen queue (4096 deep, as node_exporter's) until one finishes.
* **time**: a new connection must start its request within
  ``HEADER_TIMEOUT``, a kept-alive one within ``IDLE_TIMEOUT``; from its first
  byte a request head must be complete within ``HEADER_TIMEOUT``; a response
  must be written within ``WRITE_TIMEOUT``. Byte-by-byte senders and clients
  that never read are cut off.
* **memory**: a request head is at most 16 KiB; bodies are refused; a
  response is written in chunks with flow control from bytes shared with
  every other scraper, so a client that does not read holds at most one
  chunk of buffer and a reference to the exposition.

Shutdown (SIGTERM, SIGINT) stops listening, closes idle connections, lets
responses in flight finish for ``SHUTDOWN_GRACE`` and cuts the rest; a
second signal cuts at once. SIGHUP reloads the web configuration.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import errno
import logging
import math
import resource
import signal
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crusoe_metrics_exporter import footprint
from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.files import read_text
from crusoe_metrics_exporter.host import PluginRecord
from crusoe_metrics_exporter.web.auth import BasicAuth
from crusoe_metrics_exporter.web.config import RateLimit, Watcher, WebConfig
from crusoe_metrics_exporter.web.endpoints import Endpoints, Response, plain
from crusoe_metrics_exporter.web.wire import MAX_HEAD_BYTES, BadRequest, Request, parse_head, response_head

log = logging.getLogger(__name__)

#: A new connection must have sent a complete request head within this, and
#: so must a kept-alive one from the first byte of its next request.
HEADER_TIMEOUT = 10.0
#: How long a kept-alive connection may wait for its next request.
IDLE_TIMEOUT = 90.0
#: How long writing one response may take.
WRITE_TIMEOUT = 30.0
#: After SIGTERM, responses in flight get this long to finish.
SHUTDOWN_GRACE = 2.5
#: Listen queue asked for (the kernel caps it at net.core.somaxconn).
BACKLOG = 4096
#: File descriptors kept free for plugins (eBPF maps, probe sockets, files).
FD_RESERVE = 256
#: Responses are written in pieces of this size, each after the previous one drained.
CHUNK = 256 * 1024
#: Read buffer of one TLS connection (the largest TLS record).
TLS_READ_BUFFER = 16 * 1024
#: Connections accepted per wake-up of the listening socket, before other work gets a turn.
ACCEPT_BATCH = 64
#: Below this size head and body go out in one write.
SMALL_RESPONSE = 16 * 1024


@dataclass(eq=False)  # identity: kept in a set
class _Connection:
    sock: socket.socket
    peer: str
    #: The web configuration when it was accepted (its TLS settings hold for its lifetime).
    config: WebConfig
    #: Set once the transport is up (after the TLS handshake, with TLS).
    writer: asyncio.StreamWriter | None = None
    #: Answering a request (not evictable) rather than waiting for one.
    busy: bool = False
    task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        else:
            # Still in the TLS handshake: no transport to abort yet, but a
            # shut-down socket makes the handshake fail at once.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


class _TokenBucket:
    """exporter-toolkit's rate_limit: ``burst`` requests at once, then one per ``interval``."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(self.limit.burst), self._tokens + (now - self._stamp) / self.limit.interval)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class HttpServer:
    def __init__(self, endpoints: Endpoints, max_connections: int, web: Watcher) -> None:
        self.endpoints = endpoints
        self.max_connections = max_connections
        self.web = web
        self._auth = BasicAuth()
        self._bucket: _TokenBucket | None = None
        self._loop = asyncio.get_running_loop()
        self._connections: set[_Connection] = set()
        #: The connections waiting for a request, the longest-waiting first: eviction is O(1),
        #: which matters when a flood of reconnecting clients keeps the server at its limit.
        self._idle: OrderedDict[_Connection, None] = OrderedDict()
        self._listeners: list[socket.socket] = []
        self._paused: set[socket.socket] = set()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._exit_code = 0
        self._busy = 0
        self._drained = asyncio.Event()
        self._last_warning: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------
    def start(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            sock.listen(BACKLOG)
            sock.setblocking(False)
            self._listeners.append(sock)
            self._loop.add_reader(sock, self._accept, sock)

    def request_stop(self, code: int = 0) -> None:
        """Begin a graceful shutdown (again: cut everything at once)."""
        if self._stopping:
            log.info("second stop request: closing every connection now")
            for conn in list(self._connections):
                conn.abort()
            self._drained.set()
            return
        self._stopping = True
        self._exit_code = code
        self._stop_requested.set()

    async def run_until_stopped(self) -> int:
        """Serve until ``request_stop``; returns its exit code after the connections are done."""
        await self._stop_requested.wait()
        for sock in self._listeners:
            self._loop.remove_reader(sock)
            sock.close()
        for conn in list(self._idle):
            conn.abort()
        if self._busy:
            log.info("waiting up to %gs for %d response(s) in flight", SHUTDOWN_GRACE, self._busy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), SHUTDOWN_GRACE)
        for conn in list(self._connections):
            conn.abort()
        await asyncio.sleep(0)  # let the aborted transports close
        return self._exit_code

    # -- accepting -------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        """The listening socket is readable: accept what is waiting, within the connection limit.

        Our own accept loop rather than asyncio's, so the limit is applied
        before a connection costs a file descriptor: with every connection
        busy, new ones wait in the listen queue instead of being accepted
        into EMFILE.
        """
        for _ in range(ACCEPT_BATCH):
            if not self._make_room():
                self._pause(listener)
                return
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._warn("accept", f"cannot accept connections: {exc.strerror}; retrying in a second")
                    self._pause(listener)
                    self._loop.call_later(1.0, self._resume)
                    return
                continue  # ECONNABORTED and the like: that client is gone, take the next
            sock.setblocking(False)
            conn = _Connection(sock, _format_peer(address), self.web.current())
            self._connections.add(conn)
            self._idle[conn] = None
            conn.task = self._loop.create_task(self._serve_connection(conn))

    def _make_room(self) -> bool:
        """Whether one more connection may be accepted, closing the longest idle one if that is needed."""
        if len(self._connections) < self.max_connections:
            return True
        if not self._idle:
            self._warn("limit", f"{self.max_connections} connections are busy answering; new connections wait "
                                "in the listen queue")
            return False
        victim = next(iter(self._idle))
        log.debug("connection limit %d reached: closing the longest idle connection (%s)", self.max_connections,
                  victim.peer)
        self._forget(victim)
        victim.abort()
        return True

    def _pause(self, listener: socket.socket) -> None:
        if listener not in self._paused:
            self._paused.add(listener)
            self._loop.remove_reader(listener)

    def _resume(self) -> None:
        if self._stopping:
            return
        for listener in list(self._paused):
            self._paused.discard(listener)
            self._loop.add_reader(listener, self._accept, listener)

    def _warn(self, key: str, message: str) -> None:
        """A warning at most once a minute per kind: an attack must not flood the log."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -math.inf) >= 60:
            self._last_warning[key] = now
            log.warning("%s", message)

    # -- connections -----------------------------------------------------
    async def _serve_connection(self, conn: _Connection) -> None:
        reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)  # bounds what a connection may buffer unread
        protocol = asyncio.StreamReaderProtocol(reader)
        clean = False
        tls = conn.config.tls
        try:
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: protocol, conn.sock, ssl=tls, ssl_handshake_timeout=HEADER_TIMEOUT if tls else None)
            writer = conn.writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
            if tls is not None and not conn.config.san_allowed(transport.get_extra_info("peercert")):
                log.debug("connection from %s: client certificate has none of client_allowed_sans", conn.peer)
                return
            # Flow control: drain() waits while more than one chunk is unsent.
            transport.set_write_buffer_limits(high=CHUNK)
            await self._converse(conn, reader, writer)
            clean = True
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ssl.SSLError) as exc:
            log.debug("connection from %s ended: %s", conn.peer, _describe(exc))
        finally:
            self._forget(conn)
            if conn.writer is None:
                conn.sock.close()
            elif clean:
                conn.writer.close()
            else:
                conn.writer.transport.abort()
            if self._paused:
                self._resume()

    async def _converse(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while not self._stopping:
            try:
                head = await _read_head(reader, HEADER_TIMEOUT if first else IDLE_TIMEOUT)
            except _HeadTimeout:
                await self._send(writer, None, plain(408, "request head not received in time\n"), False, conn.config)
                return
            except BadRequest as exc:
                await self._send(writer, None, plain(exc.status, exc.detail + "\n"), False, conn.config)
                return
            if head is None:
                return  # closed, or idle too long between requests
            self._set_busy(conn, True)
            try:
                request = parse_head(head)
            except BadRequest as exc:
                await self._send(writer, None, plain(exc.status, exc.detail + "\n"), False, conn.config)
                return
            started = time.monotonic()
            config = self.web.current()
            response = await self._respond(request, conn.peer, config)
            keep = request.keep_alive and not self._stopping
            await self._send(writer, request, response, keep, config)
            log.debug("%s %s %s %d %d bytes %.3fs", conn.peer, request.method, request.path, response.status,
                      len(response.body), time.monotonic() - started)
            self._set_busy(conn, False)
            if not keep:
                return
            first = False

    async def _respond(self, request: Request, peer: str, config: WebConfig) -> Response:
        """The rate limit, then basic auth, then the page (exporter-toolkit's order)."""
        if config.rate_limit is not None:
            if self._bucket is None or self._bucket.limit != config.rate_limit:
                self._bucket = _TokenBucket(config.rate_limit)
            if not self._bucket.take():
                return plain(429, "too many requests\n")
        if config.users and not await self._auth.allows(request.header("authorization"), config.users):
            log.debug("%s %s %s: not authorized", peer, request.method, request.path)
            return plain(401, "unauthorized\n", ("WWW-Authenticate", 'Basic realm="crusoe-metrics-exporter"'))
        try:
            return await self.endpoints.respond(request)
        except Exception as exc:
            log.error("error while serving %s %s to %s: %s: %s", request.method, request.path, peer,
                      type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            return plain(500, "internal error\n")

    async def _send(self, writer: asyncio.StreamWriter, request: Request | None, response: Response,
                    keep: bool, config: WebConfig) -> None:
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *response.headers, *config.headers]
        if not keep:
            headers.append(("Connection", "close"))
        elif request is not None and request.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        head = response_head(response.status, headers)
        body = b"" if request is not None and request.method == "HEAD" else response.body
        async with asyncio.timeout(WRITE_TIMEOUT):
            if len(body) <= SMALL_RESPONSE:
                writer.write(head + body)
                await writer.drain()
                return
            writer.write(head)
            view = memoryview(body)
            for offset in range(0, len(view), CHUNK):
                writer.write(view[offset : offset + CHUNK])
                await writer.drain()

    def _set_busy(self, conn: _Connection, busy: bool) -> None:
        if conn.busy == busy:
            return
        conn.busy = busy
        self._busy += 1 if busy else -1
        if busy:
            self._idle.pop(conn, None)
        else:
            self._idle[conn] = None  # now the most recently idle
        if self._busy == 0 and self._stopping:
            self._drained.set()

    def _forget(self, conn: _Connection) -> None:
        if conn.busy:
            self._set_busy(conn, False)
        self._connections.discard(conn)
        self._idle.pop(conn, None)


class _HeadTimeout(Exception):
    """A request head was started but not completed in time."""


async def _read_head(reader: asyncio.StreamReader, wait: float) -> bytes | None:
    """The next request head, or None when the client closed or sent nothing within ``wait``.

    From its first byte, the whole head must arrive within HEADER_TIMEOUT,
    however slowly the client trickles it.
    """
    try:
        async with asyncio.timeout(wait):
            first = await reader.readexactly(1)
    except (TimeoutError, asyncio.IncompleteReadError):
        return None
    lines: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(HEADER_TIMEOUT):
            while True:
                if first == b"\n":
                    line = first
                else:
                    try:
                        line = first + await reader.readuntil(b"\n")
                    except asyncio.LimitOverrunError:
                        raise BadRequest(431, "request head too large") from None
                first = b""
                size += len(line)
                if size > MAX_HEAD_BYTES:
                    raise BadRequest(431, "request head too large")
                if line in (b"\r\n", b"\n"):
                    if lines:
                        return b"".join(lines)
                    continue  # empty lines before the request line are ignored (RFC 9112 2.2)
                lines.append(line)
    except TimeoutError:
        raise _HeadTimeout from None


def _format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed by the client"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- sockets and process set-up ----------------------------------------------

class CannotListen(Exception):
    """The address cannot be bound; the message is one line for the user."""


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port``; an empty host means every interface (IPv6 and IPv4)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]", as IPv6 addresses are written next to a port
    if ":" in host:
        return _bound(socket.AF_INET6, host, port)
    if host == "" and socket.has_ipv6:
        try:
            return _bound(socket.AF_INET6, "::", port)
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                raise
    return _bound(socket.AF_INET, host, port)


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            # Like Go's ":9500": one socket for IPv6 and IPv4 clients.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard limit (systemd gives services 1024); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(read_text("/proc/sys/fs/nr_open"))
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("open-file limit raised from %d to %d", soft, target)
            return target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else target


def connection_cap(configured: int, open_files: int) -> int:
    """How many connections may be open at once: the setting, within what the open-file limit allows."""
    return max(1, min(configured, open_files - FD_RESERVE))


def _somaxconn() -> int:
    try:
        return int(read_text("/proc/sys/net/core/somaxconn"))
    except (OSError, ValueError):
        return BACKLOG


def _bound_tls_buffers() -> None:
    """Make asyncio's TLS protocol allocate 16 KiB per connection instead of 256 KiB.

    CPython 3.11+'s ``SSLProtocol`` allocates a read buffer of
    ``SSLProtocol.max_size`` (256 KiB) for every TLS connection up front:
    1,000 idle TLS connections took 326 MiB, beyond the 256 MiB the exporter
    is given. A TLS record is at most 16 KiB, so reads of that size lose
    nothing. The attribute is CPython's, not API: without it, nothing changes.
    """
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    if protocol is not None and getattr(protocol, "max_size", 0) > TLS_READ_BUFFER:
        protocol.max_size = TLS_READ_BUFFER


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's own reports (a failed accept, a callback that raised): one line, never a traceback."""
    exc = context.get("exception")
    message = context.get("message", "event loop error")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        log.warning("%s: %s (accepting resumes in a second)", message, exc.strerror)
        return
    log.warning("%s%s", message, f": {type(exc).__name__}: {exc}" if exc is not None else "")
    if exc is not None:
        log.debug("traceback", exc_info=exc)


# -- entry point --------------------------------------------------------------

def serve(exporter: Exporter, host: str, port: int, web: WebConfig) -> None:
    """Listen, start the plugins in the background, serve until SIGTERM/SIGINT.

    Raises CannotListen when the address cannot be bound, and StrictModeError
    (after a graceful shutdown) when strict mode ended serving because a
    plugin failed.
    """
    open_files = raise_open_file_limit()
    _bound_tls_buffers()
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise CannotListen(f"cannot listen on port {port}: {exc.strerror or exc}") from None
    cap = connection_cap(int(exporter.settings.core["max_connections"]), open_files)
    code = asyncio.run(_serve(exporter, sock, cap, Watcher(web)))
    if code:
        exporter.raise_if_strict_failed()


async def _serve(exporter: Exporter, sock: socket.socket, cap: int, web: Watcher) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception)
    server = HttpServer(Endpoints(exporter), cap, web)
    server.start([sock])
    address = sock.getsockname()
    bound = str(address[0])
    log.info("listening on %s:%d (%s; at most %d connections, listen backlog %d)",
             f"[{bound}]" if ":" in bound else bound, address[1], web.current().describe(), cap,
             min(BACKLOG, _somaxconn()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_on_signal(server, sig))
    loop.add_signal_handler(signal.SIGHUP, web.reload)

    def settled(rec: PluginRecord) -> None:
        if exporter.settings.core["strict"] and rec.state == "failed":
            loop.call_soon_threadsafe(server.request_stop, 1)
        if exporter.startup is not None and exporter.startup.ready:
            # The last plugin settled: what start-up dropped goes back to the kernel.
            footprint.settle_after_start()

    exporter.begin_start(on_settled=settled)
    try:
        return await server.run_until_stopped()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _stop_on_signal(server: HttpServer, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        log.info("%s: shutting down", sig.name)
        server.request_stop(0)

    return handler

