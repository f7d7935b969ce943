"""Drive the exporter in-process and read one scrape as {(name, labels): value}."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import Scrape, render
from crusoe_metrics_exporter.runner import SampleGate

if TYPE_CHECKING:
    from crusoe_metrics_exporter.ebpf.service import EbpfService

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def ebpf_unavailable() -> str | None:
    """Why eBPF tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "eBPF tests need root"
    from crusoe_metrics_exporter.ebpf import check_environment

    support = check_environment()
    return None if support.supported else support.reason


def fake_proc(root: Path, mounts: str = "") -> Path:
    """A HOST_PROC_PATH whose 1/mounts holds ``mounts`` (isolates tests from the host's NFS mounts)."""
    (root / "1").mkdir(parents=True, exist_ok=True)
    (root / "1" / "mounts").write_text(mounts)
    return root


@contextmanager
def running(env: Mapping[str, str], plugins: Sequence[str]) -> Iterator[Exporter]:
    exporter = Exporter.from_environment(environ=dict(env))
    try:
        exporter.start(only=list(plugins))
        for rec in exporter.records:
            if rec.name in plugins:
                assert rec.state == "active", f"{rec.name} is {rec.state}: {rec.reason}"
        yield exporter
    finally:
        exporter.stop()


def scrape(exporter: Exporter, plugins: Sequence[str] | None = None) -> Series:
    text = render(exporter.collect(only=plugins)).decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


def value(series: Series, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    if key not in series:
        known = sorted({dict(k[1]).__repr__() for k in series if k[0] == name})
        raise AssertionError(f"no series {name}{labels}; present: {known}")
    return series[key]


def before_traffic(series: Series, name: str, **labels: str) -> float:
    """A counter's value in a scrape taken before a test's traffic: 0 when its series does not exist yet.

    With idle_series off (the default) a target's series start with its first
    request, so a target nothing has talked to yet has none; its counters have
    counted nothing.
    """
    return series.get((name, frozenset(labels.items())), 0.0)


def labelsets(series: Series, name: str) -> list[dict[str, str]]:
    return [dict(k[1]) for k in series if k[0] == name]


def ebpf_service_families(service: EbpfService) -> dict[str, Metric]:
    """The eBPF runtime's own metrics as a scrape serves them (validated, rendered, parsed back), by family name."""
    from crusoe_metrics_exporter.ebpf.service import EBPF_METRICS

    text = render(Scrape(SampleGate("ebpf", EBPF_METRICS).groups(service.collect()))).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def parse_openmetrics(text: str) -> list[Metric]:
    """prometheus_client's OpenMetrics parser (which refuses an invalid exposition), typed."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse

    return list(parse(text))  # type: ignore[no-untyped-call]
