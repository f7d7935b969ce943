"""The real server process, scraped over HTTP."""

from __future__ import annotations

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.builtins import builtin_plugins
from helpers.fake_plugins import install_distribution
from helpers.server import CLI, running_exporter
from prometheus_client.parser import text_string_to_metric_families


def test_metrics_health_and_index() -> None:
    with running_exporter() as exporter:
        status, ctype, body = exporter.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert "crusoe_vm_exporter_build_info" in families
        states = {s.labels["plugin"] for s in families["crusoe_vm_exporter_plugin_state"].samples}
        assert states >= builtin_plugins()
        assert exporter.get("/health")[2] == "OK"
        status, ctype, page = exporter.get("/")
        assert ctype.startswith("text/html") and "disk_stats" in page and "/metrics" in page


def test_openmetrics_is_negotiated() -> None:
    with running_exporter() as exporter:
        _, ctype, body = exporter.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert ctype.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert "crusoe_vm_exporter_plugin_errors_total{" in body
    # The whole exposition must be valid OpenMetrics, not only its framing.
    from helpers.exporter_scrape import parse_openmetrics

    families = {f.name: f.type for f in parse_openmetrics(body)}
    assert families["crusoe_vm_exporter_plugin_errors"] == "counter"


def test_concurrent_scrapes_all_succeed() -> None:
    with running_exporter() as exporter, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: exporter.get("/metrics"), range(24)))
    assert all(status == 200 and "crusoe_vm_exporter_build_info" in body for status, _, body in results)


def test_broken_third_party_plugin_leaves_metrics_serving(tmp_path: Path) -> None:
    # A real installed distribution (dist-info + entry point) whose module
    # raises on import, found through the normal entry-point machinery.
    env = install_distribution(tmp_path, "broken-collector", "0.3",
                               {"broken_collector": "raise RuntimeError('this plugin is broken')\n"},
                               {"broken": "broken_collector"})
    with running_exporter(env) as exporter:
        _, _, body = exporter.get("/metrics")
        _, _, plugins = exporter.get("/plugins.json")
    assert 'crusoe_vm_exporter_plugin_state{plugin="broken",state="failed"} 1.0' in body
    assert 'crusoe_vm_exporter_plugin_up{plugin="disk_stats"}' in body
    assert "this plugin is broken" in plugins

    listing = subprocess.run([CLI, "plugins"], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert "broken" in listing.stdout and "RuntimeError: this plugin is broken" in listing.stdout

    strict = subprocess.run([CLI, "--strict", "collect", "--plugin", "disk_stats", "--plugin", "broken"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert strict.returncode == 1
    assert "strict mode" in strict.stderr and "Traceback" not in strict.stderr
    # A plugin that is not selected is never imported: nothing of it can fail.
    assert subprocess.run([CLI, "--strict", "collect", "--plugin", "disk_stats"], env=env, capture_output=True,
                          timeout=60).returncode == 0


def test_sigterm_stops_the_server_cleanly() -> None:
    with running_exporter() as exporter:
        exporter.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert exporter.proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10


def test_port_in_use_is_one_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([CLI, "--listen-address", "127.0.0.1", "--port", str(port), "--disable",
                                 "disk_latency,nfs_latency,objstore,probes"], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crusoe-metrics-exporter: cannot listen on port") and "Traceback" not in result.stderr



def test_default_bind_serves_ipv4_and_ipv6() -> None:
    import urllib.request

    # An empty LISTEN_ADDRESS counts as unset: every interface, as the seed's ":9500".
    with running_exporter({"LISTEN_ADDRESS": ""}, args=("--disable", "disk_latency,nfs_latency,probes")) as exporter:
        assert exporter.get("/health")[2] == "OK"
        with urllib.request.urlopen(f"http://[::1]:{exporter.port}/health", timeout=10) as resp:
            assert resp.read() == b"OK"


def test_bracketed_ipv6_listen_address_binds() -> None:
    # "[::1]" is how IPv6 addresses are usually written next to a port; it
    # used to fail with "cannot listen on port ...: Name or service not known".

    from crusoe_metrics_exporter.web.server import bind

    sock = bind("[::1]", 0)
    try:
        assert sock.getsockname()[0] == "::1"
    finally:
        sock.close()


def test_gzip_only_when_the_scraper_accepts_it() -> None:
    import gzip
    import urllib.request

    def fetch(port: int, encoding: str | None) -> tuple[str | None, bytes]:
        headers = {"Accept-Encoding": encoding} if encoding is not None else {}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.headers.get("Content-Encoding"), resp.read()

    with running_exporter(args=("--enable", "disk_stats")) as exporter:
        encoding, body = fetch(exporter.port, "gzip")
        assert encoding == "gzip" and b"crusoe_vm_exporter_build_info" in gzip.decompress(body)
        encoding, body = fetch(exporter.port, "deflate, GZIP;q=0.5")
        assert encoding == "gzip" and b"crusoe_vm_exporter_build_info" in gzip.decompress(body)
        for refused in (None, "identity", "gzip;q=0", "gzip; q=0.0, identity", "x-gzipped"):
            encoding, body = fetch(exporter.port, refused)
            assert encoding is None and b"crusoe_vm_exporter_build_info" in body, refused
