"""A TCP server that answers each fixed-size request after a known delay.

Stands in for an NFS server (or any request/response service) in tests of
latency measurement: the client sends ``request_size`` bytes, the server
sleeps ``delay`` seconds and sends ``reply_size`` bytes back. Works on any
address family and port, including 2049 on loopback.
"""

from __future__ import annotations

import errno
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

REQUEST_SIZE = 64
REPLY_SIZE = 128


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return bytes(buf)
        buf.extend(chunk)
    return bytes(buf)


@dataclass
class DelayServer:
    host: str
    port: int
    delay: float
    request_size: int = REQUEST_SIZE
    reply_size: int = REPLY_SIZE
    answered: int = 0
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> DelayServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Other test suites on a shared machine may hold a fixed port such as
        # 127.0.0.1:2049 for a moment; wait for it rather than fail.
        deadline = time.monotonic() + 15
        while True:
            try:
                sock.bind((self.host, self.port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.2)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop.is_set():
                request = _recv_exactly(conn, self.request_size)
                if len(request) < self.request_size:
                    return
                if self._stop.wait(self.delay):
                    return
                try:
                    conn.sendall(b"r" * self.reply_size)
                except OSError:
                    return
                self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for t in self._threads:
            t.join(timeout=2)


@contextmanager
def delay_server(host: str, port: int, delay: float) -> Iterator[DelayServer]:
    server = DelayServer(host, port, delay).start()
    try:
        yield server
    finally:
        server.stop()


def private_loopback() -> str:
    """A random 127.x.y.z address: every one is local, and unlikely to be used by another test."""
    return f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"


def run_client(host: str, port: int, requests: int, request_size: int = REQUEST_SIZE,
               reply_size: int = REPLY_SIZE, connect_from: str | None = None) -> None:
    """One connection, ``requests`` strictly sequential request/reply exchanges."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if connect_from is not None:
            sock.bind((connect_from, 0))
        sock.settimeout(10)
        sock.connect((host, port))
        for _ in range(requests):
            sock.sendall(b"q" * request_size)
            reply = _recv_exactly(sock, reply_size)
            if len(reply) != reply_size:
                raise AssertionError(f"short reply from {host}:{port}")
