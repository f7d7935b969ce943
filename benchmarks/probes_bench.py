"""Probes: how long one round takes against many loopback endpoints, and what a scrape costs.

64 NFS servers (127.0.0.1 .. 127.0.0.64), each with an ONC-RPC NULL responder
on its own loopback address, probed by ICMP and NULL RPC through the real
exporter (targets service, scheduler, worker pool). Reports the time until
the first round's 128 results are all in, and the per-scrape cost of
collect + render with those results. Everything stays on loopback.

    .venv/bin/python benchmarks/probes_bench.py [--quick]
"""

from __future__ import annotations

import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import render

SERVERS = 64


def _responder(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        with conn:
            try:
                conn.settimeout(2)
                data = conn.recv(64)
                xid = struct.unpack_from(">I", data, 4)[0]
                body = struct.pack(">6I", xid, 1, 0, 0, 0, 0)
                conn.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
            except (OSError, struct.error):
                pass


def main() -> int:
    quick = "--quick" in sys.argv
    scrapes = 50 if quick else 300
    stop = threading.Event()
    listeners = []
    port = 0
    for i in range(1, SERVERS + 1):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((f"127.0.0.{i}", port))
        port = s.getsockname()[1]
        s.listen(64)
        listeners.append(s)
        threading.Thread(target=_responder, args=(s, stop), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "1").mkdir()
        (Path(tmp) / "1" / "mounts").write_text("")
        env = {
            "HOST_PROC_PATH": tmp,
            "NFS_SERVER_IPS": ",".join(f"127.0.0.{i}" for i in range(1, SERVERS + 1)),
            "NFS_TARGET_PORTS": str(port),
            "PROBE_INTERVAL": "1h",
            "PROBE_JITTER": "0s",
            "PROBE_TIMEOUT": "5s",
        }
        exporter = Exporter.from_environment(environ=env)
        started = time.perf_counter()
        exporter.start(only=["probes"])
        rec = next(r for r in exporter.records if r.name == "probes")
        collector = rec.collector
        assert collector is not None, rec.reason
        store = collector.store  # type: ignore[attr-defined]
        while len(store.snapshot()[0]) < 2 * SERVERS and time.perf_counter() - started < 30:
            time.sleep(0.005)
        round_seconds = time.perf_counter() - started
        latest = store.snapshot()[0]
        ok = sum(1 for r in latest.values() if r.outcome.success)
        t0 = time.perf_counter()
        size = 0
        for _ in range(scrapes):
            size = len(render(exporter.collect(only=["probes"])))
        per_scrape = (time.perf_counter() - t0) / scrapes
        exporter.stop()
    stop.set()
    for s in listeners:
        s.close()
    print(f"probes: {len(latest)} probes ({ok} ok) of {SERVERS} endpoints, concurrency 16: "
          f"first round complete in {round_seconds * 1000:.0f} ms (incl. exporter start)")
    print(f"probes: scrape (collect + render, {size} bytes): {per_scrape * 1000:.2f} ms over {scrapes} scrapes")
    return 0 if ok == 2 * SERVERS else 1


if __name__ == "__main__":
    raise SystemExit(main())
