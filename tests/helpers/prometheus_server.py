"""A real Prometheus (Debian package) on loopback scraping one target, with a temp TSDB."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.processes import stop
from helpers.server import free_port
from helpers.waiting import http_status, wait_for_ok

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass(frozen=True)
class Prometheus:
    port: int

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self._query({"query": promql})

    def query_at(self, promql: str, at: float) -> list[dict[str, Any]]:
        """An instant query evaluated at ``at`` (Unix seconds); a range selector returns its raw samples."""
        return self._query({"query": promql, "time": f"{at:.3f}"})

    def _query(self, params: dict[str, str]) -> list[dict[str, Any]]:
        promql = params["query"]
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@contextmanager
def prometheus(target: str, workdir: Path, scrape_interval: str = "1s", job_yaml: str = "",
               rule_files: tuple[Path, ...] = (), job_name: str = "exporter") -> Iterator[Prometheus]:
    """Prometheus scraping ``target`` as job ``job_name``; ``job_yaml`` adds settings to the scrape job (scheme,
    tls_config, ...), ``rule_files`` are evaluated every ``scrape_interval``."""
    port = free_port("127.0.0.1")
    job_extra = "".join(f"    {line}\n" for line in job_yaml.splitlines())
    config = workdir / "prometheus.yml"
    rules = "".join(f"  - {path}\n" for path in rule_files)
    config.write_text(
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n"
        f"  - job_name: {job_name}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n" + job_extra
    )
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = Prometheus(port)
    try:
        wait_for_ok(lambda: http_status(f"http://127.0.0.1:{port}/-/ready"), proc, 30, "prometheus",
                    (workdir / "prometheus.log").read_text, step=0.2)
        yield server
    finally:
        stop(proc)
        log.close()
