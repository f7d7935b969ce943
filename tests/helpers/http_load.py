"""Load and abuse clients for the HTTP server tests and benchmarks, as one asyncio process.

Run as a script (inside a network namespace with ``ip netns exec``); prints
one JSON object with what happened. Every loop is bounded in time.

  abuse     IDLE idle connections, SLOWLORIS clients sending a request head one
            byte at a time, NEVER_READ clients that send a request and never read,
            and one scraper fetching /metrics on a new connection every INTERVAL;
            every attacker reconnects (after a short pause) when the server
            closes it, so the pressure stays constant.
  scrapers  CONCURRENCY clients fetching /metrics back to back, a new
            connection per scrape.
  resets    COUNT requests whose connection is reset (RST) right after sending.
  ready     wait (at most SECONDS) until PATH (/ready) answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import struct
import time
from dataclasses import dataclass, field

REQUEST = "GET {path} HTTP/1.1\r\nHost: exporter\r\nAccept-Encoding: {encoding}\r\nConnection: close\r\n\r\n"


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    closed_by_server: dict[str, int] = field(default_factory=dict)

    def closed(self, kind: str) -> None:
        self.closed_by_server[kind] = self.closed_by_server.get(kind, 0) + 1


async def fetch(host: str, port: int, path: str = "/metrics", encoding: str = "gzip",
                timeout: float = 10.0) -> tuple[int, int]:
    """One request on a new connection: (status, body bytes). Raises on failure or timeout."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(REQUEST.format(path=path, encoding=encoding).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            return status, len(body)
        finally:
            writer.close()


async def scraper(host: str, port: int, stats: Stats, until: float, interval: float) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            status, _ = await fetch(host, port)
            if status != 200:
                stats.failures.append(f"status {status}")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            stats.failures.append(f"{type(exc).__name__}: {exc}")
        stats.latencies.append(time.monotonic() - started)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def _hold(host: str, port: int, stats: Stats, until: float, kind: str, send: bytes, trickle: float,
                rcvbuf: int = 0) -> None:
    """Keep one connection of ``kind`` open until ``until``, reconnecting when the server closes it."""
    while time.monotonic() < until:
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            if send and not trickle:
                writer.write(send)
            closed = asyncio.ensure_future(reader.read(1) if kind != "never_read" else _never(until))
            position = 0
            while time.monotonic() < until and not closed.done():
                if trickle and position < len(send):
                    writer.write(send[position : position + 1])
                    position += 1
                await asyncio.wait([closed], timeout=trickle or max(0.0, until - time.monotonic()))
            if closed.done() and time.monotonic() < until:
                stats.closed(kind)
            closed.cancel()
        except OSError:
            stats.closed(kind)
        finally:
            writer.transport.abort()
        await asyncio.sleep(0.1)


async def _never(until: float) -> bytes:
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    return b""


async def abuse(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    until = time.monotonic() + args.seconds
    slow_head = REQUEST.format(path="/metrics", encoding="identity").encode()
    tasks = [_hold(args.host, args.port, stats, until, "idle", b"", 0.0) for _ in range(args.idle)]
    tasks += [_hold(args.host, args.port, stats, until, "slowloris", slow_head, args.trickle)
              for _ in range(args.slowloris)]
    never = REQUEST.format(path="/metrics", encoding="identity").replace("Connection: close\r\n", "").encode()
    tasks += [_hold(args.host, args.port, stats, until, "never_read", never * 4, 0.0, rcvbuf=4096)
              for _ in range(args.never_read)]
    await asyncio.sleep(0)
    # The scraper starts once the attackers are connected.
    attack = [asyncio.ensure_future(t) for t in tasks]
    await asyncio.sleep(args.warmup)
    await scraper(args.host, args.port, stats, until, args.interval)
    await asyncio.gather(*attack)
    return {"latencies": stats.latencies, "failures": stats.failures, "closed_by_server": stats.closed_by_server}


async def scrapers(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    until = time.monotonic() + args.seconds
    await asyncio.gather(*(scraper(args.host, args.port, stats, until, 0.0) for _ in range(args.concurrency)))
    return {"latencies": stats.latencies, "failures": stats.failures}


async def resets(args: argparse.Namespace) -> dict[str, object]:
    request = REQUEST.format(path="/metrics", encoding="identity").encode()
    done = 0
    for _ in range(args.count):
        sock = socket.create_connection((args.host, args.port), timeout=5)
        sock.sendall(request)
        # SO_LINGER 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        done += 1
    status, _ = await fetch(args.host, args.port)
    return {"resets": done, "status_after": status}


async def ready(args: argparse.Namespace) -> dict[str, object]:
    until = time.monotonic() + args.seconds
    while True:
        try:
            status, _ = await fetch(args.host, args.port, args.path, timeout=2)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status = 0
        if status == 200 or time.monotonic() > until:
            return {"status": status}
        await asyncio.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("abuse", "scrapers", "resets", "ready"))
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--slowloris", type=int, default=50)
    ap.add_argument("--never-read", type=int, default=10)
    ap.add_argument("--trickle", type=float, default=0.2, help="seconds between a slowloris client's bytes")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between the abuse scraper's scrapes")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--path", default="/ready", help="what 'ready' waits for")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = {"abuse": abuse, "scrapers": scrapers, "resets": resets, "ready": ready}[args.mode]
    print(json.dumps(asyncio.run(runner(args))))


if __name__ == "__main__":
    main()
