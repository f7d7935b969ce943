"""Run the real exporter process on a free loopback port and scrape it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from helpers.processes import stop
from helpers.waiting import wait_for_ok

CLI = str(Path(sys.executable).parent / "crusoe-metrics-exporter")


@dataclass
class RunningExporter:
    proc: subprocess.Popen[bytes]
    port: int
    #: The process's stderr goes to a file, never a pipe: a pipe nobody reads
    #: fills up and then blocks the exporter's logging, and with it the server.
    stderr: IO[bytes]
    #: With TLS: how the test client connects (https then).
    tls: ssl.SSLContext | None = None
    #: Sent with every request (e.g. Authorization).
    headers: Mapping[str, str] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def get(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 20.0) -> tuple[int, str, str]:
        req = urllib.request.Request(self.url + path, headers={**(self.headers or {}), **(headers or {})})
        with urllib.request.urlopen(req, timeout=timeout, context=self.tls) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()

    def log(self) -> str:
        """Everything the exporter wrote to stderr so far."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` (IPv4 or IPv6) right now."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def running_exporter(env: Mapping[str, str] | None = None, args: tuple[str, ...] = (),
                     ready_timeout: float = 60.0, wait_for: str = "/ready",
                     wrapper: tuple[str, ...] = (), tls: ssl.SSLContext | None = None,
                     headers: Mapping[str, str] | None = None) -> Iterator[RunningExporter]:
    """Start ``crusoe-metrics-exporter serve`` and wait until ``wait_for`` answers 200.

    ``/ready``: every plugin has settled (started, unsupported or failed);
    ``/health``: the server listens, plugins may still be starting.
    ``wrapper`` is a command the exporter runs under (e.g. setpriv to drop to a user with capabilities).
    ``tls`` and ``headers`` are how the test client talks to it (HTTPS, credentials).
    """
    port = free_port()
    full_env = {**os.environ, "PORT": str(port), "LISTEN_ADDRESS": "127.0.0.1", **(env or {})}
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([*wrapper, CLI, "serve", *args], env=full_env, stdout=subprocess.DEVNULL, stderr=stderr)
        running = RunningExporter(proc, port, stderr, tls, headers)
        try:
            wait_for_ok(lambda: running.get(wait_for, timeout=2)[0], proc, ready_timeout, "exporter", running.log)
            yield running
        finally:
            stop(proc)
