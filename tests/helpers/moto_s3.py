"""A real S3-compatible server (moto's server mode) on a loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers.processes import stop
from helpers.server import free_port
from helpers.tls_certs import TestPki

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")


@dataclass(frozen=True)
class MotoS3:
    host: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@contextmanager
def moto_s3(host: str = "127.0.0.1", pki: TestPki | None = None) -> Iterator[MotoS3]:
    port = free_port(host)
    argv = [MOTO_SERVER, "-H", host, "-p", str(port)]
    if pki is not None:
        argv += ["-c", str(pki.server_cert), "-k", str(pki.server_key)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = MotoS3(host, port, "https" if pki else "http")
    try:
        deadline = time.monotonic() + 30
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"moto_server exited with {proc.returncode}: {err[-2000:]}")
            with socket.socket(family) as s:
                if s.connect_ex((host, port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("moto_server did not start listening")
            time.sleep(0.1)
        yield server
    finally:
        stop(proc, timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
