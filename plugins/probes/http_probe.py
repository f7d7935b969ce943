"""HTTP(S) GET with connect, TLS and first-byte phases.

Written on a bare socket rather than http.client so each phase has its own
timestamp, and so the TLS name (SNI and certificate check) is the object
store's FQDN while the TCP peer is one specific address of it.
"""

from __future__ import annotations

import socket
import ssl
import time

from crusoe_metrics_exporter.plugins.probes.results import CLOSED, TIMEOUT, Outcome, socket_error_reason

MAX_STATUS_LINE = 8192
USER_AGENT = "crusoe-metrics-exporter-probe"


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
    start = time.perf_counter()
    deadline = start + timeout
    phases: list[tuple[str, float]] = []

    def elapsed() -> float:
        return time.perf_counter() - start

    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        return Outcome.failed(socket_error_reason(exc), elapsed(), detail=str(exc))
    mark = time.perf_counter()
    phases.append(("connect", mark - start))
    sock: socket.socket = raw
    try:
        if tls is not None:
            raw.settimeout(max(deadline - time.perf_counter(), 0.001))
            try:
                sock = tls.wrap_socket(raw, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                return Outcome.failed("tls_verify", elapsed(), phases, exc.verify_message or str(exc))
            except ssl.SSLError as exc:
                return Outcome.failed("tls_error", elapsed(), phases, str(exc))
            now = time.perf_counter()
            phases.append(("tls", now - mark))
            mark = now
        request = (
            f"GET / HTTP/1.1\r\nHost: {_host_header(host, port, tls is not None)}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        sock.settimeout(max(deadline - time.perf_counter(), 0.001))
        sock.sendall(request)
        head = b""
        first_byte_at: float | None = None
        while b"\r\n" not in head:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(1024)
            if not chunk:
                break
            if first_byte_at is None:
                first_byte_at = time.perf_counter()
                phases.append(("first_byte", first_byte_at - mark))
            head += chunk
            if len(head) > MAX_STATUS_LINE:
                break
    except ssl.SSLError as exc:
        return Outcome.failed("tls_error", elapsed(), phases, str(exc))
    except OSError as exc:
        reason = socket_error_reason(exc)
        return Outcome.failed(TIMEOUT if reason == TIMEOUT else reason, elapsed(), phases, str(exc))
    finally:
        sock.close()
    if not head:
        return Outcome.failed(CLOSED, elapsed(), phases, "closed without a response")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not (parts[1].isdigit() and len(parts[1]) == 3):
        return Outcome.failed("bad_response", elapsed(), phases, f"not an HTTP status line: {status_line[:80]!r}")
    return Outcome(True, elapsed(), tuple(phases), detail=f"HTTP {parts[1].decode()}")
