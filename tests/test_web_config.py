"""TLS, client certificates and basic auth from node_exporter's web configuration file.

The real exporter process serves with a throw-away CA (tests/helpers/tls_certs);
clients are Python's ssl/urllib and a real Prometheus.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from helpers.prometheus_server import PROMETHEUS, prometheus
from helpers.server import CLI, RunningExporter, running_exporter
from helpers.tls_certs import TestPki, make_pki

ONLY_DISK_STATS = ("--enable", "disk_stats")
PASSWORD = "s3cret-for-tests"


def _hash(password: str, cost: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _client(pki: TestPki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _status(exporter: RunningExporter, path: str = "/health", **kwargs: object) -> int:
    try:
        return exporter.get(path, **kwargs)[0]  # type: ignore[arg-type]
    except urllib.error.HTTPError as exc:
        return exc.code


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def wrong_pki(tmp_path: Path) -> TestPki:
    return make_pki(tmp_path / "wrong-pki")


@pytest.mark.parametrize(("content", "message"), [
    ("tls_server_config: [", "not valid YAML (line 1)"),
    ("tls_server_confg: {}\n", "top level: unknown key 'tls_server_confg': expected one of tls_server_config, "),
    ("tls_server_config: {cert_file: server.pem}\n", "tls_server_config: missing one of key or key_file"),
    ("tls_server_config: {cert_file: nowhere.pem, key_file: server.key}\n",
     "tls_server_config.cert_file: cannot read "),
    ("tls_server_config: {cert_file: server.pem, key_file: client.key}\n",
     "tls_server_config: certificate and key do not load as a pair"),
    ("tls_server_config: {cert_file: server.pem, key_file: server.key, min_version: TLS14}\n",
     "tls_server_config.min_version: 'TLS14' is not one of TLS10, TLS11, TLS12, TLS13"),
    ("tls_server_config: {cert_file: server.pem, key_file: server.key, client_auth_type: RequestClientCert}\n",
     "RequestClientCert (a client certificate that is not verified) is not supported here"),
    ("tls_server_config: {cert_file: server.pem, key_file: server.key, client_ca_file: ca.pem}\n",
     "client CAs are configured without a client_auth_type that verifies them"),
    ("tls_server_config: {cert_file: server.pem, key_file: server.key, cipher_suites: [RC4]}\n",
     "tls_server_config.cipher_suites: 'RC4' is not one of "),
    ("basic_auth_users: {prometheus: plaintext}\n", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}\n",
     "http_server_config.headers.X-Frame-Options: 'allow' is not one of deny, sameorigin"),
    ("http_server_config: {headers: {Server: nginx}}\n", "http_server_config.headers: unknown key 'Server'"),
    ("rate_limit: {interval: 1s, burst: 0}\n", "rate_limit.burst: expected an integer of at least 1, got 0"),
])
def test_an_invalid_web_config_stops_start_up_with_one_line(pki: TestPki, content: str, message: str) -> None:
    config = pki.ca_cert.parent / "web.yml"
    config.write_text(content)
    result = subprocess.run([CLI, "serve", "--web.config.file", str(config), *ONLY_DISK_STATS],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"crusoe-metrics-exporter: web config file {config}: "), lines[0]
    assert message in lines[0], lines[0]


def test_a_missing_web_config_file_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([CLI, "serve", "--web.config.file", str(tmp_path / "absent.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"crusoe-metrics-exporter: web config file {tmp_path / 'absent.yml'}: "
                                     "cannot be read: No such file or directory")


def test_tls_serves_clients_that_trust_the_ca_and_only_them(pki: TestPki, wrong_pki: TestPki) -> None:
    config = pki.ca_cert.parent / "web.yml"
    # Relative paths are relative to the configuration file, as in exporter-toolkit.
    config.write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
                      "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    args = ("--web.config.file", str(config), *ONLY_DISK_STATS)
    with running_exporter(args=args, tls=_client(pki)) as exporter:
        status, _, body = exporter.get("/metrics")
        assert status == 200 and "crusoe_vm_exporter_build_info" in body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get_with(exporter, _client(wrong_pki))
        # Plain HTTP to the TLS port gets no HTTP answer.
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" not in _drain(sock)
        with ssl.create_default_context(cafile=str(pki.ca_cert)).wrap_socket(
                socket.create_connection(("127.0.0.1", exporter.port), timeout=5), server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = _drain(tls)
        assert b"200 OK" in answer and b"X-Frame-Options: deny\r\n" in answer
        assert exporter.get("/health")[2] == "OK"
        assert "Traceback" not in exporter.log()


def _get_with(exporter: RunningExporter, context: ssl.SSLContext) -> int:
    return RunningExporter(exporter.proc, exporter.port, exporter.stderr, context).get("/health", timeout=5)[0]


def _drain(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    return out


def test_client_certificates_required_and_their_sans_checked(pki: TestPki, wrong_pki: TestPki) -> None:
    config = pki.ca_cert.parent / "web.yml"
    base = ("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n")
    config.write_text(base + "  client_allowed_sans: [prometheus]\n")
    args = ("--web.config.file", str(config), *ONLY_DISK_STATS)
    with running_exporter(args=args, tls=_client(pki, with_cert=True)) as exporter:
        assert exporter.get("/health")[2] == "OK"
        # No client certificate, or one from another CA: the handshake fails.
        for context in (_client(pki), _wrong_client(pki, wrong_pki)):
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                _get_with(exporter, context)
        # The SAN list is reloaded like everything else: a certificate without an allowed SAN is turned away.
        config.write_text(base + "  client_allowed_sans: [someone-else, 10.0.0.1]\n")
        assert _eventually(lambda: _refused(exporter, _client(pki, with_cert=True)))
        config.write_text(base)
        assert _eventually(lambda: not _refused(exporter, _client(pki, with_cert=True)))
        assert "Traceback" not in exporter.log()


def _wrong_client(pki: TestPki, wrong: TestPki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))  # trusts the server ...
    context.load_cert_chain(str(wrong.client_cert), str(wrong.client_key))  # ... but shows a foreign client cert
    return context


def _refused(exporter: RunningExporter, context: ssl.SSLContext | None = None) -> bool:
    """Whether a request fails (TLS handshake, connection or HTTP status), through ``context`` if given."""
    view = exporter if context is None else RunningExporter(exporter.proc, exporter.port, exporter.stderr, context,
                                                            exporter.headers)
    try:
        return view.get("/health", timeout=5)[0] != 200
    except (urllib.error.URLError, ConnectionError, ssl.SSLError, OSError):
        return True


def test_basic_auth_right_wrong_and_missing(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n")
    with running_exporter(args=("--web.config.file", str(config), *ONLY_DISK_STATS),
                          headers=_basic("prometheus", PASSWORD)) as exporter:
        assert exporter.get("/metrics")[0] == 200
        for headers in (_basic("prometheus", "wrong"), _basic("nobody", PASSWORD), {"Authorization": ""},
                        {"Authorization": "Basic not-base64!"}, {"Authorization": "Bearer x"}):
            try:
                exporter.get("/metrics", headers=headers)
                raise AssertionError(f"{headers} was let in")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401 and exc.headers["WWW-Authenticate"].startswith("Basic"), headers
        unauthenticated = RunningExporter(exporter.proc, exporter.port, exporter.stderr)
        assert _status(unauthenticated, "/metrics") == 401
        assert _status(unauthenticated, "/ready") == 401  # every path, as node_exporter
        assert exporter.get("/metrics")[0] == 200  # still fine after the refusals


def test_changes_are_picked_up_a_bad_change_keeps_the_old_config_and_sighup_reloads(
        pki: TestPki, wrong_pki: TestPki) -> None:
    directory = pki.ca_cert.parent
    config = directory / "web.yml"
    tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
    config.write_text(tls + f"basic_auth_users:\n  alice: '{_hash('a-pass', 4)}'\n")
    with running_exporter(args=("--web.config.file", str(config), *ONLY_DISK_STATS), tls=_client(pki),
                          headers=_basic("alice", "a-pass")) as exporter:
        as_bob = _basic("bob", "b-pass")
        assert _status(exporter) == 200 and _status(exporter, headers=as_bob) == 401
        config.write_text(tls + f"basic_auth_users:\n  bob: '{_hash('b-pass', 4)}'\n")
        assert _eventually(lambda: _status(exporter, headers=as_bob) == 200)
        assert _status(exporter) == 401
        # A broken file: logged (the files are looked at when connections arrive, at most once a
        # second, not on a timer), and the last good configuration stays.
        config.write_text(tls + "basic_auth_users: [not, a, mapping]\n")
        assert _eventually(lambda: _status(exporter, headers=as_bob) == 200
                           and "keeping the previous web configuration" in exporter.log())
        # Certificates rotated on disk (another CA's): new connections present them.
        for name in ("server.pem", "server.key"):
            (directory / name).write_bytes((wrong_pki.ca_cert.parent / name).read_bytes())
        config.write_text(tls + f"basic_auth_users:\n  alice: '{_hash('a-pass', 4)}'\n")
        rotated = RunningExporter(exporter.proc, exporter.port, exporter.stderr, _client(wrong_pki),
                                  _basic("alice", "a-pass"))
        assert _eventually(lambda: not _refused(rotated))
        # SIGHUP reloads at once, even when nothing looks changed.
        mtime = config.stat().st_mtime_ns
        config.write_text(tls + f"basic_auth_users:\n  carol: '{_hash('c-pass', 4)}'\n")
        os.utime(config, ns=(mtime, mtime))
        exporter.proc.send_signal(signal.SIGHUP)
        as_carol = RunningExporter(exporter.proc, exporter.port, exporter.stderr, _client(wrong_pki),
                                   _basic("carol", "c-pass"))
        assert _eventually(lambda: _status(as_carol) == 200, timeout=3)
        assert exporter.proc.poll() is None
        log = exporter.log()
    assert "web configuration reloaded (SIGHUP)" in log and "Traceback" not in log


def test_rate_limit_answers_429_beyond_the_burst(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text("rate_limit:\n  interval: 1m\n  burst: 2\n")
    with running_exporter(args=("--web.config.file", str(config), *ONLY_DISK_STATS), wait_for="/health") as exporter:
        # running_exporter's readiness poll spent tokens already; the bucket refills one a minute.
        statuses = [_status(exporter) for _ in range(4)]
    assert statuses[-1] == 429 and statuses.count(429) >= 2


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus is not installed")
def test_prometheus_scrapes_over_tls_with_a_client_certificate_and_basic_auth(pki: TestPki, tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
                      f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca_cert}\n"
                      f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n")
    job = (f"scheme: https\ntls_config:\n  ca_file: {pki.ca_cert}\n  cert_file: {pki.client_cert}\n"
           f"  key_file: {pki.client_key}\n  server_name: localhost\n"
           f"basic_auth:\n  username: prometheus\n  password: {PASSWORD}\n")
    with running_exporter(args=("--web.config.file", str(config), *ONLY_DISK_STATS), tls=_client(pki, True),
                          headers=_basic("prometheus", PASSWORD)) as exporter, \
            prometheus(f"127.0.0.1:{exporter.port}", tmp_path, job_yaml=job) as prom:
        assert _eventually(lambda: [r["value"][1] for r in prom.query('up{job="exporter"}')] == ["1"], timeout=30)
        build = prom.query('crusoe_vm_exporter_build_info{job="exporter"}')
        assert build and build[0]["value"][1] == "1"
        assert prom.query('crusoe_vm_exporter_plugin_up{plugin="disk_stats"}')[0]["value"][1] == "1"
