"""An ONC-RPC NULL server and a lone reference client, each a process of its own.

The probe's latency figures are checked against these: the server answers
NFS NULL calls on one port of several addresses (one "NFS server" each) from
one event loop in its own process, so it shares no interpreter lock with the
exporter under test; the client measures what a single, otherwise idle
program sees for the same exchange (connect, call, complete reply), written
independently of the probe's code.

    python rpc_peer.py serve ADDR[,ADDR...]               # prints the port, then serves until killed
    python rpc_peer.py client ADDR[,ADDR...] PORT ROUNDS  # prints one latency (seconds) per exchange
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

_CALL_BYTES = 44  # record mark + the 40-byte NULL call the probe sends


def _reply(call: bytes) -> bytes:
    xid = struct.unpack_from(">I", call, 4)[0]
    body = struct.pack(">6I", xid, 1, 0, 0, 0, 0)  # REPLY, MSG_ACCEPTED, AUTH_NONE, SUCCESS
    return struct.pack(">I", 0x8000_0000 | len(body)) + body


def _listen_all(addresses: Sequence[str]) -> list[socket.socket]:
    """The same free port on every address (a few tries if another process takes it meanwhile)."""
    for _attempt in range(20):
        listeners: list[socket.socket] = []
        port = 0
        try:
            for address in addresses:
                listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
                listeners.append(listener)
                listener.bind((address, port))
                port = listener.getsockname()[1]
                listener.listen(128)
                listener.setblocking(False)
            return listeners
        except OSError as exc:
            for listener in listeners:
                listener.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no port free on every address")


def serve(addresses: Sequence[str]) -> None:
    selector = selectors.DefaultSelector()
    listeners = _listen_all(addresses)
    for listener in listeners:
        selector.register(listener, selectors.EVENT_READ, None)
    print(listeners[0].getsockname()[1], flush=True)
    while True:
        for key, _events in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data is None:  # a listener
                with contextlib.suppress(OSError):
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(conn, selectors.EVENT_READ, b"")
                continue
            try:
                data = key.data + sock.recv(4096)
            except OSError:
                data = b""
            if len(data) >= _CALL_BYTES or not data:
                if data:
                    with contextlib.suppress(OSError):
                        sock.send(_reply(data))
                selector.unregister(sock)
                sock.close()
            else:
                selector.modify(sock, selectors.EVENT_READ, data)


def client(addresses: Sequence[str], port: int, rounds: int) -> list[float]:
    """Seconds per exchange: connect, NULL call, complete reply; one at a time, addresses in turn."""
    results = []
    for i in range(rounds):
        xid = 0x5EED0000 + i
        call = struct.pack(">10I", xid, 0, 2, 100003, 4, 0, 0, 0, 0, 0)
        started = time.perf_counter()
        with socket.create_connection((addresses[i % len(addresses)], port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(struct.pack(">I", 0x8000_0000 | len(call)) + call)
            reply = b""
            while len(reply) < 28:
                chunk = sock.recv(64)
                if not chunk:
                    raise ConnectionError("server closed before replying")
                reply += chunk
            results.append(time.perf_counter() - started)
        time.sleep(0.005)
    return results


@contextlib.contextmanager
def rpc_servers(addresses: Sequence[str], wrap: Sequence[str] = ()) -> Iterator[int]:
    """Run the server process (optionally under ``wrap``, e.g. ``ip netns exec NS``); yields its port."""
    proc = subprocess.Popen([*wrap, sys.executable, str(Path(__file__)), "serve", ",".join(addresses)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the RPC server process did not start")
        yield int(line)
    finally:
        proc.kill()
        proc.wait()


def lone_client(addresses: Sequence[str], port: int, rounds: int, wrap: Sequence[str] = ()) -> list[float]:
    """Latencies a lone client process measures for ``rounds`` exchanges."""
    out = subprocess.run([*wrap, sys.executable, str(Path(__file__)), "client", ",".join(addresses), str(port),
                          str(rounds)], capture_output=True, text=True, check=True, timeout=120).stdout
    return [float(x) for x in out.split()]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2].split(","))
    else:
        latencies = client(sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]))
        print("\n".join(f"{s:.9f}" for s in latencies))
