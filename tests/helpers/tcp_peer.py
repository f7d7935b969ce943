"""Tiny TCP peers run inside network namespaces (``ip netns exec NS python tcp_peer.py ...``).

    tcp_peer.py sink HOST PORT            accept connections, read until EOF, answer "ok"
    tcp_peer.py send HOST PORT NBYTES     connect, send NBYTES, half-close, wait for "ok"
"""

from __future__ import annotations

import socket
import sys
import threading


def sink(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    print("ready", flush=True)

    def drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass
            conn.sendall(b"ok")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def send(host: str, port: int, nbytes: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect((host, port))
        chunk = b"x" * 16384
        left = nbytes
        while left > 0:
            n = min(left, len(chunk))
            sock.sendall(chunk[:n])
            left -= n
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(2) != b"ok":
            raise SystemExit("no acknowledgement from the sink")


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "sink":
        sink(host, port)
    else:
        send(host, port, int(sys.argv[4]))
