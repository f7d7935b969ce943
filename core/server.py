"""The HTTP face: /metrics, /health, /ready, / and /plugins.json.

A threading server, so concurrent scrapes are served in parallel; the
exporter's runners coalesce concurrent collects of one plugin. A scrape only
reads what plugins already gathered: no compilation, no DNS, no probing.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import html
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crusoe_metrics_exporter import __version__
from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    render,
    wants_openmetrics,
)
from crusoe_metrics_exporter.host import PluginRecord

log = logging.getLogger(__name__)


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], exporter: Exporter, family: socket.AddressFamily) -> None:
        self.exporter = exporter
        self.address_family = family
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # Like Go's ":9500": one socket for IPv6 and IPv4 clients.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def make_server(host: str, port: int, exporter: Exporter) -> ExporterHTTPServer:
    """Bind ``host:port``; an empty host means every interface, IPv6 and IPv4 when the host has IPv6."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]", as IPv6 addresses are written next to a port
    if ":" in host:
        return ExporterHTTPServer((host, port), exporter, socket.AF_INET6)
    if host == "" and socket.has_ipv6:
        try:
            return ExporterHTTPServer(("::", port), exporter, socket.AF_INET6)
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                raise
    return ExporterHTTPServer((host, port), exporter, socket.AF_INET)


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    server_version = f"crusoe-metrics-exporter/{__version__}"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._metrics()
            elif path == "/health":
                self._send(200, "text/plain; charset=utf-8", b"OK")
            elif path == "/ready":
                self._ready()
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", _index(self.server.exporter).encode())
            elif path == "/plugins.json":
                body = json.dumps([r.as_dict() for r in self.server.exporter.records], indent=2).encode()
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
        except BrokenPipeError:
            pass
        except Exception:
            log.exception("error while serving %s", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _metrics(self) -> None:
        openmetrics = wants_openmetrics(self.headers.get("Accept"))
        body = render(self.server.exporter.collect(), openmetrics=openmetrics)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        headers = {}
        if accepts_gzip(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, content_type, body, headers)

    def _ready(self) -> None:
        startup = self.server.exporter.startup
        pending = startup.pending() if startup is not None else []
        if pending:
            self._send(503, "text/plain; charset=utf-8", f"starting: {', '.join(pending)}\n".encode())
        else:
            self._send(200, "text/plain; charset=utf-8", b"ready\n")

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815 - the name http.server dispatches to

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header lists gzip with a non-zero quality."""
    for part in (accept_encoding or "").split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() != "gzip":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _index(exporter: Exporter) -> str:
    rows = []
    for rec in exporter.records:
        details = ", ".join(f"{k}={v}" for k, v in sorted(rec.details.items()))
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(c))}</td>"
                for c in (rec.name, rec.distribution, rec.version, rec.state,
                          rec.reason + (f" (fix: {rec.fix})" if rec.fix else ""), details)
            )
            + "</tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>crusoe-metrics-exporter</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}"
        "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h1>crusoe-metrics-exporter {html.escape(__version__)}</h1>"
        "<p><a href='/metrics'>/metrics</a> &middot; <a href='/health'>/health</a> &middot; "
        "<a href='/ready'>/ready</a> &middot; "
        "<a href='/plugins.json'>/plugins.json</a></p>"
        "<h2>Plugins</h2><table><tr><th>plugin</th><th>distribution</th><th>version</th><th>state</th>"
        "<th>reason</th><th>details</th></tr>" + "".join(rows) + "</table></body></html>"
    )


def serve(exporter: Exporter, host: str, port: int) -> None:
    """Listen, start the plugins in the background, serve until interrupted.

    SIGINT/SIGTERM raise KeyboardInterrupt/SystemExit in the caller. In
    strict mode a plugin that settles as failed ends serving with
    StrictModeError.
    """
    httpd = make_server(host, port, exporter)
    bound = str(httpd.server_address[0])
    log.info("listening on %s:%d", f"[{bound}]" if ":" in bound else bound, httpd.server_address[1])

    def settled(rec: PluginRecord) -> None:
        if exporter.settings.core["strict"] and rec.state == "failed":
            # shutdown() waits for serve_forever to return: not on this thread.
            threading.Thread(target=httpd.shutdown, daemon=True).start()

    exporter.begin_start(on_settled=settled)
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        httpd.server_close()
    exporter.raise_if_strict_failed()
