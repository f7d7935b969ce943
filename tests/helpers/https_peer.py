"""A real HTTPS server process and a lone reference client process for probe timing checks.

The server is ``openssl s_server -www`` (answers every GET with a status
page). The client is a separate Python process doing what the probe does -
TCP connect, TLS handshake with SNI and certificate check, ``GET /`` - one
request at a time on an otherwise idle interpreter, and reporting the time
from connect to the first response byte. It shares no code with the probe.

    python https_peer.py client HOST PORT NAME CA_FILE ROUNDS
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def openssl_unavailable() -> str | None:
    if shutil.which("openssl") is None:
        return "the openssl command is not installed (scripts/setup-system.sh --test installs it)"
    return None


@contextlib.contextmanager
def https_server(cert: Path, key: Path, host: str = "127.0.0.1") -> Iterator[int]:
    """``openssl s_server -www`` on a free port of ``host``; yields the port."""
    with socket.socket() as free:
        free.bind((host, 0))
        port = free.getsockname()[1]
    proc = subprocess.Popen(["openssl", "s_server", "-quiet", "-www", "-accept", f"{host}:{port}",
                             "-cert", str(cert), "-key", str(key)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("openssl s_server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def client(host: str, port: int, name: str, ca_file: str, rounds: int) -> list[float]:
    context = ssl.create_default_context(cafile=ca_file)
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode())
            if not tls.recv(1):
                raise ConnectionError("no response")
            results.append(time.perf_counter() - started)
        time.sleep(0.01)
    return results


def lone_client(host: str, port: int, name: str, ca_file: Path, rounds: int) -> list[float]:
    """Seconds from connect to first response byte, per request, as a lone client process sees them."""
    out = subprocess.run([sys.executable, str(Path(__file__)), "client", host, str(port), name, str(ca_file),
                          str(rounds)], capture_output=True, text=True, check=True, timeout=120).stdout
    return [float(x) for x in out.split()]


if __name__ == "__main__":
    latencies = client(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
    print("\n".join(f"{s:.9f}" for s in latencies))
