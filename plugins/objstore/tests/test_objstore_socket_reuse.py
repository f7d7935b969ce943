"""Socket memory is reused at once; the kernel's "does not match" cache must never carry over.

Short connections alternate between a destination nobody watches and the
watched endpoint, so the kernel hands the freed socket of one to the next.
The client half-closes first and the peer answers and closes at once, so
the connection can reach TCP_CLOSE (TIME_WAIT) before the client's last
receive is traced: a verdict cached then, and only cleared at close, would
hide the next connection that gets the same socket memory.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.delay_server import private_loopback
from helpers.exporter_scrape import ebpf_unavailable, fake_proc, running, scrape, value

pytestmark = pytest.mark.ebpf

REASON = ebpf_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING objstore socket-reuse test: {REASON} !!!", allow_module_level=True)

PAYLOAD = 1000
ROUNDS = 150


@contextmanager
def answer_and_close(host: str) -> Iterator[int]:
    """A server that reads until EOF, answers and closes immediately (FIN right behind the data)."""
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(64)
    srv.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                while conn.recv(65536):
                    pass
                conn.sendall(b"ok")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        srv.close()
        thread.join(timeout=5)


def exchange(host: str, port: int, size: int) -> None:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"x" * size)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(2) == b"ok"


def test_every_watched_connection_is_counted_after_unwatched_ones(tmp_path: Path) -> None:
    endpoint, elsewhere = private_loopback(), private_loopback()
    with answer_and_close(endpoint) as watched_port, answer_and_close(endpoint) as other_port, \
            answer_and_close(elsewhere) as elsewhere_port:
        env = {
            "OBJSTORE_ENDPOINT_IPS": endpoint,
            "OBJSTORE_ENDPOINT_PORT": str(watched_port),
            "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
        }
        with running(env, ["objstore"]) as exporter:
            for i in range(ROUNDS):
                if i % 2:
                    exchange(endpoint, other_port, 10)
                else:
                    exchange(elsewhere, elsewhere_port, 10)
                exchange(endpoint, watched_port, PAYLOAD)
            s = scrape(exporter, ["objstore"])
    assert value(s, "crusoe_vm_objectstore_bytes_sent_total", endpoint=endpoint) == ROUNDS * PAYLOAD
    assert value(s, "crusoe_vm_objectstore_bytes_recv_total", endpoint=endpoint) == ROUNDS * 2
    assert value(s, "crusoe_vm_objectstore_connections_total", endpoint=endpoint) == ROUNDS
