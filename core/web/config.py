"""The web configuration file: TLS and basic auth in the format of node_exporter (exporter-toolkit).

Given with ``--web.config.file`` (``[exporter] web_config_file``), YAML::

    tls_server_config:        # TLS when present
      cert_file: server.pem   # or cert: <PEM>; relative paths are relative to this file
      key_file: server.key    # or key: <PEM>
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.pem  # or client_ca: <PEM>
      client_allowed_sans: [prometheus.example]
      min_version: TLS12
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 and lower
      prefer_server_cipher_suites: true
      curve_preferences: [X25519]
    http_server_config:
      http2: true             # accepted; this server speaks HTTP/1.1
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2y$10$...  # bcrypt hash
    rate_limit: {interval: 100ms, burst: 10}

Everything is checked when the file is loaded: an unknown key, a wrong type,
a certificate that does not load or a hash that is not bcrypt stops start-up
with one line naming the file and the key. ``Watcher`` reloads the file (and
the certificate, key and CA files it names) when they change and on SIGHUP;
a reload that fails keeps the previous configuration and logs why.

Where Python's ssl module cannot do what Go's crypto/tls does, the setting is
refused with the reason rather than silently weakened: ``client_auth_type``
``RequestClientCert`` and ``RequireAnyClientCert`` (asking for a certificate
without verifying it), and more than one curve in ``curve_preferences``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crusoe_metrics_exporter.files import open_regular, read_file
from crusoe_metrics_exporter.options import parse_duration

log = logging.getLogger(__name__)

_TOP = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
        "client_allowed_sans", "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
        "curve_preferences")
_HTTP = ("http2", "headers")
_RATE = ("interval", "burst")

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                "TLS13": ssl.TLSVersion.TLSv1_3}

#: client_auth_type -> ssl verify mode; None: Go can do it, Python's ssl cannot.
CLIENT_AUTH: dict[str, ssl.VerifyMode | None] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    "RequestClientCert": None,
    "RequireAnyClientCert": None,
    "RequireClientCert": None,
}

#: Go's names (crypto/tls CipherSuites()) -> OpenSSL's. The TLS 1.3 suites are
#: accepted and, as in Go, not configurable.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": "",
    "TLS_AES_256_GCM_SHA384": "",
    "TLS_CHACHA20_POLY1305_SHA256": "",
}

CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}

#: Response headers that may be configured, with the values allowed (None: any), as in exporter-toolkit.
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_BCRYPT = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")


class WebConfigError(ValueError):
    """The web configuration cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class RateLimit:
    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A loaded, checked web configuration. ``WebConfig()`` is plain HTTP without auth."""

    path: Path | None = None
    tls: ssl.SSLContext | None = None
    #: Subject alternative names a client certificate must have one of (empty: any verified certificate).
    client_allowed_sans: frozenset[str] = frozenset()
    users: Mapping[str, bytes] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    rate_limit: RateLimit | None = None
    #: Files whose change means a reload: the configuration and what it names.
    files: tuple[Path, ...] = ()

    def describe(self) -> str:
        tls = "TLS" if self.tls is not None else "no TLS"
        auth = f"basic auth for {len(self.users)} user(s)" if self.users else "no authentication"
        return f"{tls}, {auth}" + (", rate limited" if self.rate_limit else "")

    def san_allowed(self, peercert: Mapping[str, Any] | None) -> bool:
        """Whether a verified client certificate names one of ``client_allowed_sans`` (True when none are set)."""
        if not self.client_allowed_sans:
            return True
        for kind, value in (peercert or {}).get("subjectAltName", ()):
            if value in self.client_allowed_sans:
                return True
            if kind == "IP Address" and _normal_ip(value) in {_normal_ip(s) for s in self.client_allowed_sans}:
                return True
        return False


def _normal_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def load(path: Path) -> WebConfig:
    """Read and check the web configuration file; raises WebConfigError."""
    try:
        text = read_file(path).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"web config file {path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") \
            from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise WebConfigError(f"web config file {path}: not valid YAML{at}: {problem}") from None
    return _Reader(path).config(document)


class _Reader:
    """Checks one document; every error names the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.files: list[Path] = [path]

    def fail(self, key: str, problem: str) -> WebConfigError:
        return WebConfigError(f"web config file {self.path}: {key}: {problem}")

    def table(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        for name in value:
            if name not in allowed:
                raise self.fail(key, f"unknown key {name!r}: expected one of {', '.join(allowed)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_kind(value)}")
        return value

    def strings(self, value: Any, key: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of strings, got {_kind(value)}")
        return [self.string(item, key) for item in value]

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def config(self, document: Any) -> WebConfig:
        top = self.table(document, "top level", _TOP)
        tls, sans = self.tls(self.table(top.get("tls_server_config"), "tls_server_config", _TLS))
        http = self.table(top.get("http_server_config"), "http_server_config", _HTTP)
        if "http2" in http:
            self.boolean(http["http2"], "http_server_config.http2")  # HTTP/1.1 is served either way
        return WebConfig(self.path, tls, sans, self.users(top.get("basic_auth_users")),
                         self.headers(http.get("headers")), self.rate_limit(top.get("rate_limit")),
                         tuple(dict.fromkeys(self.files)))

    # -- tls_server_config -------------------------------------------------
    def tls(self, table: dict[str, Any]) -> tuple[ssl.SSLContext | None, frozenset[str]]:
        key = "tls_server_config"
        enabled = {"cert", "key", "cert_file", "key_file", "client_ca", "client_ca_file", "client_auth_type"}
        if not enabled & {k for k, v in table.items() if v not in (None, "")}:
            if table:
                log.debug("%s: %s has no certificate settings: TLS is off", self.path, key)
            return None, frozenset()
        if not table.get("cert") and not table.get("cert_file"):
            raise self.fail(key, "missing one of cert or cert_file")
        if not table.get("key") and not table.get("key_file"):
            raise self.fail(key, "missing one of key or key_file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with self.pem(table, "cert") as cert, self.pem(table, "key") as private_key:
            try:
                context.load_cert_chain(cert, private_key)
            except ssl.SSLError as exc:
                raise self.fail(key, f"certificate and key do not load as a pair: {exc.reason or exc}") from None
        auth_name = self.string(table.get("client_auth_type") or "NoClientCert", f"{key}.client_auth_type")
        if auth_name not in CLIENT_AUTH:
            raise self.fail(f"{key}.client_auth_type", f"{auth_name!r} is not one of {', '.join(CLIENT_AUTH)}")
        mode = CLIENT_AUTH[auth_name]
        if mode is None:
            raise self.fail(f"{key}.client_auth_type", f"{auth_name} (a client certificate that is not verified) "
                            "is not supported here: use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
        has_ca = bool(table.get("client_ca") or table.get("client_ca_file"))
        if has_ca and mode == ssl.CERT_NONE:
            raise self.fail(key, "client CAs are configured without a client_auth_type that verifies them")
        if mode != ssl.CERT_NONE:
            if has_ca:
                with self.pem(table, "client_ca") as ca:
                    try:
                        context.load_verify_locations(cafile=ca)
                    except ssl.SSLError as exc:
                        raise self.fail(f"{key}.client_ca", f"no usable CA certificate: {exc.reason or exc}") \
                            from None
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # as Go: the system's roots
            context.verify_mode = mode
        sans = frozenset(self.strings(table.get("client_allowed_sans"), f"{key}.client_allowed_sans"))
        if sans and mode != ssl.CERT_REQUIRED:
            raise self.fail(f"{key}.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")
        self.versions(context, table)
        self.ciphers(context, table)
        context.set_alpn_protocols(["http/1.1"])
        return context, sans

    @contextlib.contextmanager
    def pem(self, table: dict[str, Any], name: str) -> Iterator[str]:
        """A path to the PEM ``name``: its ``<name>_file`` (relative to this file), or the inline text.

        Inline text goes through an anonymous in-memory file: a private key
        never touches a disk.
        """
        key = f"tls_server_config.{name}"
        path_value = table.get(f"{name}_file")
        if path_value:
            path = self.base / self.string(path_value, f"{key}_file")
            self.files.append(path)
            try:
                open_regular(path).close()
            except OSError as exc:
                raise self.fail(f"{key}_file", f"cannot read {path}: {exc.strerror}") from None
            yield str(path)
            return
        text = self.string(table.get(name), key)
        fd = os.memfd_create(f"web-config-{name}", os.MFD_CLOEXEC)
        try:
            os.write(fd, text.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    def versions(self, context: ssl.SSLContext, table: dict[str, Any]) -> None:
        lowest, highest = (self.version(table, "min_version", "TLS12"), self.version(table, "max_version", "TLS13"))
        if lowest > highest:
            raise self.fail("tls_server_config", "min_version is above max_version")
        context.minimum_version, context.maximum_version = lowest, highest

    def version(self, table: dict[str, Any], name: str, default: str) -> ssl.TLSVersion:
        value = self.string(table.get(name) or default, f"tls_server_config.{name}")
        if value not in TLS_VERSIONS:
            raise self.fail(f"tls_server_config.{name}", f"{value!r} is not one of {', '.join(TLS_VERSIONS)}")
        return TLS_VERSIONS[value]

    def ciphers(self, context: ssl.SSLContext, table: dict[str, Any]) -> None:
        key = "tls_server_config"
        suites = self.strings(table.get("cipher_suites"), f"{key}.cipher_suites")
        unknown = [s for s in suites if s not in CIPHER_SUITES]
        if unknown:
            raise self.fail(f"{key}.cipher_suites", f"{unknown[0]!r} is not one of {', '.join(CIPHER_SUITES)}")
        openssl = [CIPHER_SUITES[s] for s in suites if CIPHER_SUITES[s]]
        if openssl:
            context.set_ciphers(":".join(openssl))
        if self.boolean(table.get("prefer_server_cipher_suites", True), f"{key}.prefer_server_cipher_suites"):
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        curves = self.strings(table.get("curve_preferences"), f"{key}.curve_preferences")
        unknown = [c for c in curves if c not in CURVES]
        if unknown:
            raise self.fail(f"{key}.curve_preferences", f"{unknown[0]!r} is not one of {', '.join(CURVES)}")
        if len(curves) > 1:
            raise self.fail(f"{key}.curve_preferences", "Python's ssl module sets one curve only: list one")
        if curves:
            context.set_ecdh_curve(CURVES[curves[0]])

    # -- the rest ------------------------------------------------------------
    def users(self, value: Any) -> dict[str, bytes] | None:
        key = "basic_auth_users"
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping of user names to bcrypt hashes, got {_kind(value)}")
        users: dict[str, bytes] = {}
        for user, hashed in value.items():
            name = str(user)
            text = self.string(hashed, f"{key}.{name}")
            match = _BCRYPT.match(text)
            if match is None or not 4 <= int(match.group(1)) <= 31:
                raise self.fail(f"{key}.{name}", "not a bcrypt hash (expected $2y$<cost>$<53 characters>, as "
                                "'htpasswd -nBC 10 \"\" | tr -d \":\\n\"' prints)")
            users[name] = text.encode()
        return users or None

    def headers(self, value: Any) -> tuple[tuple[str, str], ...]:
        key = "http_server_config.headers"
        table = self.table(value, key, tuple(HEADERS))
        out = []
        for name, header_value in table.items():
            text = self.string(header_value, f"{key}.{name}")
            allowed = HEADERS[name]
            if allowed is not None and text not in allowed:
                raise self.fail(f"{key}.{name}", f"{text!r} is not one of {', '.join(allowed)}")
            if "\r" in text or "\n" in text:
                raise self.fail(f"{key}.{name}", "a header value cannot span lines")
            if text:
                out.append((name, text))
        return tuple(out)

    def rate_limit(self, value: Any) -> RateLimit | None:
        key = "rate_limit"
        table = self.table(value, key, _RATE)
        if not table:
            return None
        raw = table.get("interval", 0)
        try:
            interval = parse_duration(str(raw))
        except ValueError:
            raise self.fail(f"{key}.interval", f"{raw!r} is not a duration such as 100ms or 1s") from None
        if interval == 0:
            return None
        burst = table.get("burst")
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise self.fail(f"{key}.burst", f"expected an integer of at least 1, got {burst!r}")
        return RateLimit(interval, burst)


_KINDS: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


#: (inode, size, mtime) per file, None for a file that cannot be stat'ed.
Signature = tuple[tuple[int, int, int] | None, ...]


def _signature(paths: tuple[Path, ...]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class Watcher:
    """The current web configuration; reloaded when its files change, and on ``reload()`` (SIGHUP).

    ``current()`` is called for every new connection; it looks at the files
    (a stat each) at most once a second, so certificates rotated on disk are
    picked up without a restart and without a timer.
    """

    CHECK_INTERVAL = 1.0

    def __init__(self, config: WebConfig, loader: Callable[[Path], WebConfig] = load) -> None:
        self._config = config
        self._loader = loader
        self._signature = _signature(config.files)
        self._checked = time.monotonic()
        self._failed_signature: Signature | None = None

    def current(self) -> WebConfig:
        if self._config.path is not None and time.monotonic() - self._checked >= self.CHECK_INTERVAL:
            self._checked = time.monotonic()
            signature = _signature(self._config.files)
            if signature not in (self._signature, self._failed_signature):
                self._reload(signature, "changed on disk")
        return self._config

    def reload(self) -> None:
        """Read the file again now (SIGHUP)."""
        if self._config.path is None:
            log.info("SIGHUP: no web configuration file to reload")
            return
        self._reload(_signature(self._config.files), "SIGHUP")

    def _reload(self, signature: Signature, why: str) -> None:
        assert self._config.path is not None
        try:
            config = self._loader(self._config.path)
        except WebConfigError as exc:
            self._failed_signature = signature
            log.error("%s (%s); keeping the previous web configuration", exc, why)
            return
        self._config = config
        self._signature = _signature(config.files)
        self._failed_signature = None
        log.info("web configuration reloaded (%s): %s", why, config.describe())
