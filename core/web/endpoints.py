"""What the server answers: /metrics, /health, /ready, / and /plugins.json.

A scrape only reads what plugins already gathered: no compilation, no DNS,
no probing. Rendering is a function from a collect to bytes and a content
type; this module decides only which rendering a scraper gets and shares it.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import html
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from crusoe_metrics_exporter import __version__
from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, render
from crusoe_metrics_exporter.footprint import GC_PAUSE
from crusoe_metrics_exporter.textformat import LabelTexts
from crusoe_metrics_exporter.web import in_thread
from crusoe_metrics_exporter.web.wire import Request, accepts

TEXT = "text/plain; charset=utf-8"
METHODS = ("GET", "HEAD")


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def plain(status: int, text: str, *headers: tuple[str, str]) -> Response:
    return Response(status, TEXT, text.encode(), list(headers))


class SharedExposition:
    """One collect and one render per format, shared by every scraper that asks while it runs.

    A scraper that arrives while an exposition of its format (text or
    OpenMetrics, gzipped or not) is being produced waits for that one rather
    than starting another: fifty concurrent scrapers cost one collect, one
    render and one gzip. The bytes are shared, and each connection writes
    from them, so a slow reader holds a reference to the exposition, never a
    copy of it. Once produced, an exposition is dropped from here; only the
    connections still writing it keep it alive.
    """

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter
        self._inflight: dict[tuple[bool, bool], asyncio.Future[bytes]] = {}
        #: Label sets carried from one rendering to the next: most series are the same every scrape.
        self._label_texts = LabelTexts()

    async def get(self, openmetrics: bool, gzipped: bool) -> bytes:
        key = (openmetrics, gzipped)
        future = self._inflight.get(key)
        if future is None:
            future = in_thread(functools.partial(self._produce, openmetrics, gzipped), "exposition")
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._retire, key))
        # Shielded: a scraper that goes away must not cancel the others' exposition.
        return await asyncio.shield(future)

    def _retire(self, key: tuple[bool, bool], future: asyncio.Future[bytes]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if not future.cancelled():
            future.exception()  # retrieved: a failure is reported to the scrapers, not as "never retrieved"

    def _produce(self, openmetrics: bool, gzipped: bool) -> bytes:
        # A big host's scrape allocates hundreds of thousands of short-lived
        # tuples; the cyclic GC would walk everything alive again and again.
        with GC_PAUSE.held():
            body = render(self._exporter.collect(), openmetrics=openmetrics, texts=self._label_texts)
        return gzip.compress(body, compresslevel=1) if gzipped else body


class Endpoints:
    """Routes a parsed request to its page."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.expositions = SharedExposition(exporter)
        self._pages: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/metrics": self._metrics,
            "/health": self._health,
            "/ready": self._ready,
            "/": self._index,
            "/plugins.json": self._plugins,
        }

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._pages)

    async def respond(self, request: Request) -> Response:
        page = self._pages.get(request.path)
        if page is None:
            return plain(404, "not found\n")
        if request.method not in METHODS:
            return plain(405, "method not allowed\n", ("Allow", ", ".join(METHODS)))
        return await page(request)

    async def _metrics(self, request: Request) -> Response:
        openmetrics = accepts(request.header("accept"), "application/openmetrics-text")
        gzipped = accepts(request.header("accept-encoding"), "gzip")
        body = await self.expositions.get(openmetrics, gzipped)
        headers = [("Vary", "Accept-Encoding")]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        return Response(200, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE, body, headers)

    async def _health(self, request: Request) -> Response:
        return plain(200, "OK")

    async def _ready(self, request: Request) -> Response:
        startup = self.exporter.startup
        pending = startup.pending() if startup is not None else []
        if pending:
            return plain(503, f"starting: {', '.join(pending)}\n")
        return plain(200, "ready\n")

    async def _index(self, request: Request) -> Response:
        return Response(200, "text/html; charset=utf-8", index_page(self.exporter).encode())

    async def _plugins(self, request: Request) -> Response:
        body = json.dumps([r.as_dict() for r in self.exporter.records], indent=2).encode()
        return Response(200, "application/json", body)


def index_page(exporter: Exporter) -> str:
    rows = []
    for rec in exporter.records:
        details = ", ".join(f"{k}={v}" for k, v in sorted(dict(rec.details).items()))
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
        "<a href='/ready'>/ready</a> &middot; <a href='/plugins.json'>/plugins.json</a></p>"
        "<h2>Plugins</h2><table><tr><th>plugin</th><th>distribution</th><th>version</th><th>state</th>"
        "<th>reason</th><th>details</th></tr>" + "".join(rows) + "</table></body></html>"
    )
