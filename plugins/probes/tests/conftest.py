"""Real peers for the probe tests: ONC-RPC and HTTPS servers, network namespaces."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers.gil import gil_held_elsewhere as hold_gil_elsewhere
from helpers.tls_certs import TestPki, make_pki

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# -- network namespaces -----------------------------------------------------
class NetNs:
    """A network namespace of our own with loopback up."""

    _count = 0

    def __init__(self) -> None:
        NetNs._count += 1
        self.name = f"cmeprobe{os.getpid()}n{NetNs._count}"
        self.ip("netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")

    @staticmethod
    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True, text=True)

    def sysctl(self, key: str, value: str) -> None:
        # Written through /proc/sys (per namespace) so procps is not needed.
        path = "/proc/sys/" + key.replace(".", "/")
        self.exec("sh", "-c", f'printf "%s\\n" "$1" > {path}', "sh", value)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on a thread that joined this namespace (sockets it creates live here)."""
        box: dict[str, Any] = {}

        def runner() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:
                box["error"] = exc

        t = threading.Thread(target=runner)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def _netns_possible() -> str:
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not installed (scripts/setup-system.sh --test installs it)"
    return ""


@dataclass(frozen=True)
class VethPeer:
    """``client`` and ``server`` namespaces joined by a veth pair, the server answering pings."""

    client: NetNs
    server: NetNs
    v4: str
    v6: str


def make_veth_peer(netns: Callable[[], NetNs], subnet: int) -> VethPeer:
    """10.213.<subnet>.1/.2 and fd00:213:<subnet>::1/::2 on a fresh veth pair, checked reachable."""
    from crusoe_metrics_exporter.plugins.probes import icmp

    client, server = netns(), netns()
    tag = f"{os.getpid() % 10000}{client.name[-1]}{subnet}"
    a, b = f"cpa{tag}", f"cpb{tag}"
    client.exec("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", server.name)
    for ns, dev, host in ((client, a, 1), (server, b, 2)):
        ns.exec("ip", "addr", "add", f"10.213.{subnet}.{host}/24", "dev", dev)
        ns.exec("ip", "addr", "add", f"fd00:213:{subnet}::{host}/64", "dev", dev, "nodad")
        ns.exec("ip", "link", "set", dev, "up")
    peer = VethPeer(client, server, f"10.213.{subnet}.2", f"fd00:213:{subnet}::2")
    # A fresh veth may need a moment (carrier, neighbour discovery) before
    # the first echo gets through, hence a few attempts.
    for address, family in ((peer.v4, 4), (peer.v6, 6)):
        attempts = [client.call(icmp.ping, address, family, 1.0, icmp.MODE_RAW)]
        while not attempts[-1].success and len(attempts) < 5:
            attempts.append(client.call(icmp.ping, address, family, 1.0, icmp.MODE_RAW))
        assert attempts[-1].success, attempts
    return peer


@pytest.fixture
def netns() -> Iterator[Callable[[], NetNs]]:
    reason = _netns_possible()
    if reason:
        pytest.skip(f"!!! NETWORK NAMESPACE TESTS SKIPPED: {reason} !!!")
    made: list[NetNs] = []

    def make() -> NetNs:
        ns = NetNs()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


# -- an ONC-RPC responder ----------------------------------------------------
def rpc_reply(xid: int, accept_stat: int = 0, *, denied: bool = False, extra: bytes = b"") -> bytes:
    """A reply body (no record marker) as an RFC 5531 server would send it."""
    if denied:
        return struct.pack(">5I", xid, 1, 1, 0, 2) + struct.pack(">2I", 2, 4)  # RPC_MISMATCH 2..4
    return struct.pack(">6I", xid, 1, 0, 0, 0, accept_stat) + extra


def _recv_call(conn: socket.socket) -> tuple[int, int, int] | None:
    header = b""
    while len(header) < 4:
        chunk = conn.recv(4 - len(header))
        if not chunk:
            return None
        header += chunk
    (word,) = struct.unpack(">I", header)
    length = word & 0x7FFFFFFF
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    xid, _mtype, _rpcvers, prog, vers = struct.unpack_from(">5I", body, 0)
    return xid, prog, vers


class RpcResponder:
    """A TCP ONC-RPC server for NFS NULL with scripted misbehaviour.

    ``mode``: ok, bad_xid, prog_mismatch, garbage, late, denied, hang,
    fragmented, close, huge. A call for a version other than ``versions``
    gets PROG_MISMATCH like a real server's.
    """

    def __init__(self, listener: socket.socket, mode: str = "ok", versions: tuple[int, ...] = (4,),
                 delay: float = 0.0) -> None:
        self.listener = listener
        self.mode = mode
        self.versions = versions
        self.delay = delay
        self.calls: list[tuple[int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                call = _recv_call(conn)
                if call is None:
                    return
                self.calls.append(call)
                xid, prog, vers = call
                self._respond(conn, xid, prog, vers)
            except OSError:
                pass

    def _respond(self, conn: socket.socket, xid: int, prog: int, vers: int) -> None:
        mode = self.mode
        if mode == "hang":
            self._stop.wait(30)
            return
        if mode == "close":
            return
        if mode == "late":
            time.sleep(self.delay)
        if mode == "garbage":
            conn.sendall(b"\x80\x00\x00\x08NOT-RPC!")
            return
        if mode == "huge":
            conn.sendall(struct.pack(">I", 0x80000000 | 10_000_000) + b"\x00" * 64)
            return
        if mode == "denied":
            body = rpc_reply(xid, denied=True)
        elif mode == "bad_xid":
            body = rpc_reply(xid ^ 0x5A5A5A5A)
        elif mode == "prog_mismatch" or vers not in self.versions or prog != 100003:
            low, high = min(self.versions), max(self.versions)
            body = rpc_reply(xid, 2, extra=struct.pack(">2I", low, high))
        else:
            body = rpc_reply(xid)
        if mode == "fragmented":
            first, rest = body[:10], body[10:]
            conn.sendall(struct.pack(">I", len(first)) + first)
            time.sleep(0.05)
            conn.sendall(struct.pack(">I", 0x80000000 | len(rest)) + rest)
            return
        conn.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()


def listen_tcp(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(16)
    return sock


@pytest.fixture
def rpc_server() -> Iterator[Callable[..., RpcResponder]]:
    made: list[RpcResponder] = []

    def make(mode: str = "ok", listener: socket.socket | None = None, **kwargs: Any) -> RpcResponder:
        r = RpcResponder(listener or listen_tcp(), mode, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


# -- a test CA and an HTTPS server -------------------------------------------
class HttpServer:
    """Answers any request with ``status_line``; TLS when given a context. Records Host and SNI."""

    def __init__(self, listener: socket.socket, tls: ssl.SSLContext | None,
                 response: bytes = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") -> None:
        self.listener = listener
        self.response = response
        self.hosts: list[str] = []
        self.snis: list[str | None] = []
        self._tls = tls
        if tls is not None:
            tls.sni_callback = self._sni
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _sni(self, _sock: Any, name: str | None, _ctx: Any) -> None:
        self.snis.append(name)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
                if data[:1] == b"\x16":
                    # A TLS ClientHello on a plain port: answer at once, as
                    # nginx does with "400 plain HTTP request sent to HTTPS".
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    return
            for line in data.split(b"\r\n"):
                if line.lower().startswith(b"host:"):
                    self.hosts.append(line[5:].strip().decode())
            conn.sendall(self.response)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()


@pytest.fixture
def test_ca(tmp_path: Path) -> TestPki:
    """A CA and a server certificate for ``object.test`` (plus localhost, 127.0.0.1, ::1)."""
    return make_pki(tmp_path, ("object.test",))


@pytest.fixture
def http_server() -> Iterator[Callable[..., HttpServer]]:
    made: list[HttpServer] = []

    def make(tls_ca: TestPki | None = None, host: str = "127.0.0.1", **kwargs: Any) -> HttpServer:
        ctx = None
        if tls_ca is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_ca.server_cert, tls_ca.server_key)
        server = HttpServer(listen_tcp(host), ctx, **kwargs)
        made.append(server)
        return server

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def listen() -> Callable[..., socket.socket]:
    """``listen(host="127.0.0.1", port=0)``: a listening TCP socket."""
    return listen_tcp


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in exposition text, or None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@pytest.fixture
def metric() -> Callable[..., float | None]:
    """``metric(text, name, **labels)``: one series' value from exposition text."""
    return metric_value


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture
def wait() -> Callable[..., Any]:
    """``wait(predicate, timeout)``: poll until truthy; returns the last value."""
    return wait_until


@pytest.fixture
def veth_peer(netns: Callable[[], NetNs]) -> Callable[[int], VethPeer]:
    """``veth_peer(subnet)``: see :func:`make_veth_peer`."""
    return lambda subnet: make_veth_peer(netns, subnet)


@pytest.fixture
def gil_held_elsewhere() -> Callable[[], Any]:
    """``with gil_held_elsewhere(): ...`` (see helpers.gil)."""
    return hold_gil_elsewhere
