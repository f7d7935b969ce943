"""The HTTP server as a client meets it: HTTP/1.1 framing, limits, an idle loop, signals.

Every test runs the real ``crusoe-metrics-exporter serve`` process and talks
to it over real sockets.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.fake_plugins import GATED_PLUGIN, HUNG_PLUGIN, install_distribution
from helpers.processes import stop
from helpers.server import CLI, free_port, running_exporter

ONLY_DISK_STATS = ("--enable", "disk_stats")


def exchange(port: int, data: bytes, wait: float = 1.0) -> bytes:
    """Send ``data`` on a new connection; everything received until the server closes or ``wait`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def statuses(raw: bytes) -> list[int]:
    """Status codes of the responses in ``raw`` (bodies here never contain a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    with running_exporter(args=ONLY_DISK_STATS) as exporter:
        raw = exchange(exporter.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                                      b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                                      b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(raw) == [200, 404, 200]
        assert raw.index(b"\r\n\r\nOK") < raw.index(b"not found") < raw.index(b"ready\n")
        # HTTP/1.1 keeps the connection open (the read above ended by timeout, not by a close) ...
        assert b"Connection: close" not in raw
        # ... HTTP/1.0 closes it unless asked to keep it, and Connection: close is honoured.
        assert b"Connection: close" in exchange(exporter.port, b"GET /health HTTP/1.0\r\n\r\n", wait=5)
        kept = exchange(exporter.port, b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert b"Connection: keep-alive" in kept
        closed = exchange(exporter.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
                                         b"GET /health HTTP/1.1\r\n\r\n", wait=5)
        assert statuses(closed) == [200]


def test_only_get_and_head_on_known_paths() -> None:
    with running_exporter(args=ONLY_DISK_STATS) as exporter:
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            raw = exchange(exporter.port, f"{method} /metrics HTTP/1.1\r\nConnection: close\r\n\r\n".encode(), 5)
            assert statuses(raw) == [405] and b"Allow: GET, HEAD\r\n" in raw, method
        for path in ("/metric", "/metrics/", "/admin", "/../etc/passwd"):
            raw = exchange(exporter.port, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode(), 5)
            assert statuses(raw) == [404], path
        get = exchange(exporter.port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", 5)
        head = exchange(exporter.port, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", 5)
        _, _, body = get.partition(b"\r\n\r\n")
        head_head, _, nothing = head.partition(b"\r\n\r\n")
        length = [line for line in head_head.split(b"\r\n") if line.startswith(b"Content-Length:")]
        assert nothing == b"" and length and int(length[0].split(b":")[1]) > 1000
        assert b"crusoe_vm_exporter_build_info" in body
        # Absolute-form targets and queries name the same page.
        assert statuses(exchange(exporter.port, b"GET http://exporter/health?x=1 HTTP/1.1\r\n"
                                                b"Connection: close\r\n\r\n", 5)) == [200]


def test_malformed_or_oversized_requests_get_a_status_and_a_closed_connection() -> None:
    cases = {
        b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n": 431,
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n": 431,
        b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello": 413,
        b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": 400,
        b"GET /health HTTP/1.1\r\n folded: header\r\n\r\n": 400,
        b"GET /health HTTP/1.1\r\nBad Name: x\r\n\r\n": 400,
        b"GET /health HTTP/2.0\r\n\r\n": 505,
        b"GET /health\r\n\r\n": 400,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n": 400,  # TLS to a plain-HTTP port
    }
    with running_exporter(args=ONLY_DISK_STATS) as exporter:
        for request, status in cases.items():
            raw = exchange(exporter.port, request, wait=5)
            assert statuses(raw) == [status], (request[:40], raw[:80])
            assert b"Connection: close" in raw
        assert exporter.get("/health")[2] == "OK"


def test_concurrent_scrapes_share_one_collect_and_one_rendering(tmp_path: Path) -> None:
    calls, gate = tmp_path / "calls", tmp_path / "collect-gate"
    (tmp_path / "start-gate").touch()
    env = {**install_distribution(tmp_path, "gated-plugin", "1.0", {"gated_plugin": GATED_PLUGIN.format(name="slow")},
                                  {"slow": "gated_plugin"}),
           "SLOW_GATE": str(tmp_path / "start-gate"), "SLOW_CALLS": str(calls), "SLOW_COLLECT_GATE": str(gate)}
    with running_exporter(env, args=("--enable", "slow")) as exporter, ThreadPoolExecutor(10) as pool:
        scrapes = [pool.submit(exporter.get, "/metrics") for _ in range(10)]
        deadline = time.monotonic() + 10
        while not calls.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the other nine arrive while the one collect waits at its gate
        gate.touch()
        bodies = {f.result()[2] for f in scrapes}
    assert calls.read_text().count("collect") == 1
    assert len(bodies) == 1 and "crusoe_vm_slow_value 1.0" in bodies.pop()


def _wakeups(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def test_an_idle_server_sleeps_and_holds_no_threads() -> None:
    with running_exporter(args=ONLY_DISK_STATS) as exporter:
        exporter.get("/metrics")
        time.sleep(0.3)  # the collect thread of that scrape ends
        before = _wakeups(exporter.proc.pid)
        time.sleep(2.0)
        assert _wakeups(exporter.proc.pid) - before == 0  # the loop blocks: no poll interval
        assert len(list(Path(f"/proc/{exporter.proc.pid}/task").iterdir())) == 1


def test_the_open_file_soft_limit_is_raised_to_the_hard_limit() -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1"}
    proc = subprocess.Popen(["prlimit", "--nofile=1024:4096", CLI, "serve", *ONLY_DISK_STATS], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        stop(proc)
        assert proc.stderr is not None
        proc.stderr.close()


def _hung_plugin_env(tmp_path: Path) -> dict[str, str]:
    site = Path(tempfile.mkdtemp(prefix="site", dir=tmp_path))
    env = install_distribution(site, "hung-plugin", "1.0", {"hung_plugin": HUNG_PLUGIN.format(name="hung")},
                               {"hung": "hung_plugin"})
    # Trusted to run in the exporter's own process, so its stuck thread is the exporter's (in a worker process,
    # the default, it could not delay the exit at all).
    return {**env, "CRUSOE_EXPORTER_IN_PROCESS": "hung"}


def _sigterm_during_a_scrape(tmp_path: Path, args: tuple[str, ...]) -> tuple[float, dict[str, object], str]:
    """Start a scrape, SIGTERM the exporter while it is in flight: (seconds to exit, scrape outcome, stderr)."""
    outcome: dict[str, object] = {}
    with running_exporter(_hung_plugin_env(tmp_path), args=args) as exporter:

        def scrape() -> None:
            try:
                outcome["response"] = exchange(exporter.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", wait=15)
            except OSError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=scrape)
        thread.start()
        time.sleep(0.3)
        exporter.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert exporter.proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - started
        thread.join(10)
        return elapsed, outcome, exporter.log()


def test_sigterm_lets_a_scrape_in_flight_finish_and_exits_despite_a_hung_plugin(tmp_path: Path) -> None:
    # The hung plugin's collect never returns, so the scrape waits its collect
    # timeout (1 s), well inside the shutdown grace; its stop() and a thread it
    # started never return either.
    args = ("--enable", "hung,disk_stats", "--set", "exporter.collect_timeout=1s")
    elapsed, outcome, err = _sigterm_during_a_scrape(tmp_path, args)
    assert elapsed < 5.0, err
    response = outcome.get("response")
    assert isinstance(response, bytes) and statuses(response) == [200], outcome
    assert b"Connection: close" in response
    assert b'crusoe_vm_exporter_plugin_up{plugin="hung"} 0.0' in response
    assert b'crusoe_vm_exporter_plugin_up{plugin="disk_stats"} 1.0' in response
    assert "plugins did not stop within" in err and "hung-stuck" in err
    assert "Traceback" not in err


def test_sigterm_cuts_a_scrape_that_outlasts_the_shutdown_grace(tmp_path: Path) -> None:
    # With the default 5 s collect timeout the scrape cannot finish inside the
    # 2.5 s grace: it is cut, and the process still exits 0 within 5 s.
    elapsed, outcome, err = _sigterm_during_a_scrape(tmp_path, ("--enable", "hung"))
    assert elapsed < 5.0, err
    assert outcome.get("response", b"") == b"" or "error" in outcome, outcome
    assert "Traceback" not in err


def test_sighup_does_not_end_the_process() -> None:
    with running_exporter(args=ONLY_DISK_STATS) as exporter:
        exporter.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert exporter.proc.poll() is None
        assert exporter.get("/health")[2] == "OK"
