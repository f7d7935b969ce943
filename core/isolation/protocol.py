"""What the exporter and a plugin's worker process say to each other: length-prefixed JSON frames.

The worker runs third-party code, so everything it sends is untrusted input
to the exporter: JSON, never pickle (unpickling runs code); every frame is
bounded in size before it is read; a decoding problem is a ProtocolError,
never an exception the exporter does not expect; samples are decoded into
plain :class:`Sample` records that the core validates exactly as it
validates an in-process plugin's.

A frame is one JSON line (the message) followed by sample rows, one JSON
array per line, so the exporter parses no more rows than it keeps and a
frame of a million rows costs its bytes, not a million objects::

    {"ok":true,"over":0,"errors":{},"details":{}}
    ["disk_x",["vda"],1.0]
    ["lat_seconds",["read"],[[1,2,0],0.5]]
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from crusoe_metrics_exporter.contract import HistogramValue, Sample

_HEADER = struct.Struct(">I")
#: The largest frame either side reads unless told otherwise.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The other side sent something that is not a frame we accept; the connection is unusable."""


class FrameTooLarge(ProtocolError):
    pass


class PeerGone(ProtocolError):
    """The other side closed the connection (the worker exited or was killed)."""


def send(sock: socket.socket, message: Mapping[str, Any], rows: bytes = b"") -> None:
    """One frame: ``message`` as a JSON line, then ``rows`` (sample rows, see :func:`encode_sample`)."""
    data = json.dumps(message, separators=(",", ":"), allow_nan=True).encode() + b"\n" + rows
    if len(data) > 0xFFFFFFFF:
        raise FrameTooLarge(f"a message of {len(data)} bytes cannot be framed")
    sock.sendall(_HEADER.pack(len(data)) + data)


def receive(sock: socket.socket, timeout: float | None = None, limit: int = DEFAULT_MAX_FRAME) -> dict[str, Any]:
    """The next message (rows after it ignored); raises TimeoutError, PeerGone, FrameTooLarge or ProtocolError."""
    return receive_frame(sock, timeout, limit)[0]


def receive_frame(sock: socket.socket, timeout: float | None = None,
                  limit: int = DEFAULT_MAX_FRAME) -> tuple[dict[str, Any], Rows]:
    """The next message and the sample rows that follow it in the same frame (not copied)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _HEADER.unpack(_read(sock, _HEADER.size, deadline))
    if size > limit:
        raise FrameTooLarge(f"a message of {size} bytes (limit {limit})")
    body = _read(sock, size, deadline)
    end = body.find(b"\n")
    end = len(body) if end < 0 else end
    rows = Rows(body, end + 1)
    try:
        message = json.loads(body[:end])
    except (ValueError, RecursionError) as exc:  # bad JSON, a 5,000-digit number, nesting beyond the stack
        raise ProtocolError(f"not a JSON message: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be an object, got {type(message).__name__}")
    return message, rows


class Rows(NamedTuple):
    """The sample rows of a frame: ``data[start:]``, without copying them out of the frame."""

    data: bytearray
    start: int


def _read(sock: socket.socket, size: int, deadline: float | None) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        try:
            n = sock.recv_into(view[got:])
        except TimeoutError:
            raise
        except OSError as exc:
            raise PeerGone(f"connection failed: {exc.strerror or exc}") from None
        if n == 0:
            raise PeerGone("the worker closed the connection")
        got += n
    return buf


# -- samples: one JSON array per line --------------------------------------------------

def encode_sample(sample: object) -> bytes:
    """``[metric, [label values], value]``; a histogram's value is ``[[counts], sum]``.

    Whatever the plugin yielded is passed on as faithfully as JSON allows,
    so the core's validation sees (and counts) a bad sample as it would
    in-process; an item that is not a sample at all becomes ``["", "<repr>"]``.
    """
    parts: Any = sample
    try:
        metric, labels, value = parts
    except (TypeError, ValueError):
        return json.dumps(["", repr(sample)[:200]]).encode() + b"\n"
    if isinstance(value, HistogramValue):
        value = [list(value.counts), value.sum]
    row = [metric, list(labels) if isinstance(labels, tuple) else labels, value]
    try:
        return json.dumps(row, separators=(",", ":"), allow_nan=True).encode() + b"\n"
    except (TypeError, ValueError):  # a value JSON cannot hold (an object): still a bad sample, still counted
        return json.dumps(["", repr(sample)[:200]]).encode() + b"\n"


@dataclass
class Decoded:
    """What :func:`decode_rows` left out, known once its samples have all been taken."""

    #: Rows past the limit, counted and not parsed.
    beyond: int = 0
    #: Rows that are no sample at all.
    broken: int = 0


def decode_rows(rows: Rows, limit: int, counts: Decoded) -> Iterator[Sample]:
    """Samples from :func:`encode_sample` lines, one at a time; what was left out goes into ``counts``.

    Never raises. Only ``limit`` rows are parsed at all, and one at a time,
    so a frame of a million rows costs its bytes, not a million objects. The
    values are not checked here; the core's validation does that.
    """
    data, pos = rows
    taken = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        line = data[pos:end]
        pos = end + 1
        if not line:
            continue
        if taken == limit:
            counts.beyond = 1 + data.count(b"\n", pos) + (1 if data[-1:] != b"\n" and pos < len(data) else 0)
            return
        taken += 1
        sample = _sample(line)
        if sample is None:
            counts.broken += 1
        else:
            yield sample


def _sample(line: bytearray) -> Sample | None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str) or not row[0]:
        return None
    metric, labels, value = row
    if isinstance(value, list):
        if len(value) != 2 or not isinstance(value[0], list):
            return None
        value = HistogramValue(tuple(value[0]), value[1])
    return Sample(metric, tuple(labels) if isinstance(labels, list) else labels, value)
