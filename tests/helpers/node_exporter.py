"""Debian's prometheus-node-exporter as an independent reference reading the same procfs tree."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from helpers.processes import stop
from helpers.server import free_port
from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
BINARY = "prometheus-node-exporter"


def node_exporter_series(procfs: Path, collectors: Sequence[str], sysfs: Path | None = None) -> Series:
    """One scrape of node_exporter with only ``collectors`` enabled, reading ``procfs``."""
    binary = shutil.which(BINARY)
    assert binary, f"{BINARY} missing: `make test` installs Debian's prometheus-node-exporter"
    port = free_port()
    args = [binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
            f"--path.procfs={procfs}", *(f"--collector.{c}" for c in collectors)]
    if sysfs is not None:
        args.append(f"--path.sysfs={sysfs}")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("node_exporter did not serve") from None
                time.sleep(0.05)
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out
