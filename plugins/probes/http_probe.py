"""HTTP(S) GET with connect, TLS and first-byte phases.

Written on a bare socket rather than http.client so each phase has its own
timestamp, and so the TLS name (SNI and certificate check) is the object
store's FQDN while the TCP peer is one specific address of it. TLS runs over
memory BIOs with this module doing the socket I/O, so every wait for the
server lasts from our send to the kernel's receive stamp and our own crypto
counts as CPU time, not the time this thread waited for its turn (see
:mod:`.timing`). A failed run reports the wall time the attempt took.
"""

from __future__ import annotations

import socket
import ssl
import time

from crusoe_metrics_exporter.plugins.probes import timing
from crusoe_metrics_exporter.plugins.probes.results import CLOSED, TIMEOUT, Outcome, socket_error_reason

MAX_STATUS_LINE = 8192
USER_AGENT = "crusoe-metrics-exporter-probe"
_READ_BYTES = 16384


def tls_context(ca_bundle: str) -> ssl.SSLContext:
    """A verifying client context; ``ca_bundle`` replaces the system trust store when set."""
    ctx = ssl.create_default_context(cafile=ca_bundle or None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _host_header(name: str, port: int, tls: bool) -> str:
    host = f"[{name}]" if ":" in name else name
    default = 443 if tls else 80
    return host if port == default else f"{host}:{port}"


class _Channel:
    """Bytes to and from the peer over the socket, in the clear or through TLS."""

    def __init__(self, clock: timing.PhaseClock, sock: socket.socket, deadline: float) -> None:
        self._clock = clock
        self._sock = sock
        self._deadline = deadline
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()

    def handshake(self, context: ssl.SSLContext, server_name: str) -> None:
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            self._flush()
            return

    def send(self, data: bytes) -> None:
        if self._tls is None:
            self._clock.send(self._sock, data)
            return
        self._tls.write(data)
        self._flush()

    def recv(self) -> bytes:
        """Some bytes from the peer; b"" when it closed."""
        if self._tls is None:
            return self._read_socket()
        while True:
            try:
                return self._tls.read(_READ_BYTES)
            except ssl.SSLWantReadError:
                self._flush()  # e.g. a key update answer
                if not self._fill():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def _read_socket(self) -> bytes:
        remaining = self._deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        return self._clock.recv(self._sock, _READ_BYTES)

    def _fill(self) -> bool:
        data = self._read_socket()
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return bool(data)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._clock.send(self._sock, data)


def http_get(
    address: str,
    port: int,
    host: str,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> Outcome:
    """GET / from ``address:port`` with Host (and SNI when ``tls``) = ``host``.

    Any HTTP status is success: the endpoint answered. Failure reasons:
    timeout, refused, unreachable, tls_verify, tls_error, closed, bad_response.
    """
    with timing.held():
        return _http_get(address, port, host, timeout, tls)


def _http_get(address: str, port: int, host: str, timeout: float, tls: ssl.SSLContext | None) -> Outcome:
    deadline = time.perf_counter() + timeout
    clock = timing.PhaseClock()
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return Outcome.failed(socket_error_reason(exc), clock.wall_elapsed(), detail=str(exc))
    with sock:
        try:
            timing.enable_rx_timestamps(sock)
            sock.settimeout(timeout)
            clock.connect(sock, (address, port))
        except OSError as exc:
            return Outcome.failed(socket_error_reason(exc), clock.wall_elapsed(), detail=str(exc))
        clock.phase("connect")
        channel = _Channel(clock, sock, deadline)
        try:
            if tls is not None:
                try:
                    channel.handshake(tls, host)
                except ssl.SSLCertVerificationError as exc:
                    return Outcome.failed("tls_verify", clock.wall_elapsed(), clock.phases,
                                          exc.verify_message or str(exc))
                clock.phase("tls")
            channel.send((
                f"GET / HTTP/1.1\r\nHost: {_host_header(host, port, tls is not None)}\r\n"
                f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            ).encode("ascii"))
            head = b""
            while b"\r\n" not in head and len(head) <= MAX_STATUS_LINE:
                chunk = channel.recv()
                if not chunk:
                    break
                if not head:
                    clock.phase("first_byte")
                head += chunk
        except ssl.SSLError as exc:
            return Outcome.failed("tls_error", clock.wall_elapsed(), clock.phases, str(exc))
        except OSError as exc:
            reason = socket_error_reason(exc)
            return Outcome.failed(TIMEOUT if reason == TIMEOUT else reason, clock.wall_elapsed(), clock.phases,
                                  str(exc))
    if not head:
        return Outcome.failed(CLOSED, clock.wall_elapsed(), clock.phases, "closed without a response")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not (parts[1].isdigit() and len(parts[1]) == 3):
        return Outcome.failed("bad_response", clock.wall_elapsed(), clock.phases,
                              f"not an HTTP status line: {status_line[:80]!r}")
    return Outcome(True, clock.phased(), tuple(clock.phases), detail=f"HTTP {parts[1].decode()}")
