"""HTTP/1.1 on the wire: parsing a request head, writing a response head.

Only what an exporter needs: GET and HEAD without a body, keep-alive and
pipelining, strict framing. Anything that could make the end of one request
ambiguous (a body, Transfer-Encoding, folded or malformed header lines) is
refused and the connection closed, so a request can never be smuggled inside
another.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate

#: Largest request head (request line and header fields) accepted.
MAX_HEAD_BYTES = 16 * 1024
#: Most header fields accepted in one request.
MAX_HEADER_FIELDS = 100
#: Longest request line accepted.
MAX_REQUEST_LINE = 8 * 1024

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")


class BadRequest(Exception):
    """The request cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Request:
    method: str
    #: The path of the request target, without the query.
    path: str
    #: "HTTP/1.1" or "HTTP/1.0".
    version: str
    #: Header fields by lower-case name; repeated fields joined with ", ".
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection stay open after the response."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens


def parse_head(head: bytes) -> Request:
    """Parse a request head (request line, header lines, up to and without the empty line).

    Raises BadRequest for anything malformed or outside the limits.
    """
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    # RFC 9112 2.2: empty lines before the request line are ignored.
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "empty request")
    request_line = lines[0]
    if len(request_line) > MAX_REQUEST_LINE:
        raise BadRequest(414, "request line too long")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest(400, "malformed method")
    match = _VERSION.match(version)
    if match is None:
        raise BadRequest(400, "malformed HTTP version")
    if match.group(1) != b"1":
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are served")
    path = _path_of(target)
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise BadRequest(431, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            # Also refuses obsolete line folding and whitespace before the colon.
            raise BadRequest(400, "malformed header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers:
        raise BadRequest(400, "request bodies are not accepted")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or not length.isascii():
            raise BadRequest(400, "malformed Content-Length")
        if int(length) != 0:
            raise BadRequest(413, "request bodies are not accepted")
    return Request(method.decode("ascii"), path, f"HTTP/1.{match.group(2).decode()}", headers)


def _path_of(target: bytes) -> str:
    if target.startswith(b"/"):
        path = target
    elif target.lower().startswith((b"http://", b"https://")):
        # Absolute form (RFC 9112 3.2.2): the path is what follows the authority.
        rest = target.split(b"//", 1)[1]
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
    elif target == b"*":
        return "*"
    else:
        raise BadRequest(400, "malformed request target")
    path = path.split(b"?", 1)[0].split(b"#", 1)[0]
    try:
        return path.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request target is not ASCII") from None


def accepts(header: str | None, name: str) -> bool:
    """Whether a negotiation header (Accept, Accept-Encoding) lists ``name`` with a non-zero quality.

    Names compare case-insensitively; ``q=0`` (or a quality that is not a
    number) means "not acceptable" (RFC 9110 12.4.2); parameters other than
    ``q`` (``version=1.0.0``) do not matter.
    """
    for part in (header or "").split(","):
        token, *params = (p.strip() for p in part.split(";"))
        if token.lower() != name:
            continue
        quality = next((value for key, _, value in (p.partition("=") for p in params) if key.strip().lower() == "q"),
                       "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            pass
    return False


class _DateCache:
    """The Date header value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True)
        return self._value


http_date = _DateCache()


def response_head(status: int, headers: Iterable[tuple[str, str]], version: str = "HTTP/1.1") -> bytes:
    lines = [f"{version} {status} {REASONS.get(status, 'Unknown')}", f"Date: {http_date()}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
