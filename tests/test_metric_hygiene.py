"""promtool's linter over what we expose: clean, except for names the seed fixed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from helpers.fake_plugins import FakePlugin, make_exporter
from helpers.server import CLI

from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.host import discover, discover_services
from crusoe_metrics_exporter.naming import PREFIX
from crusoe_metrics_exporter.sdk import Sample


def legacy_names() -> set[str]:
    """What promtool may report: names declared with legacy_name (and the reason the Go exporter's name is kept)."""
    declared = [m for r in discover() if r.spec is not None for m in r.spec.metrics]
    declared += [m for r in discover_services() if r.spec is not None for m in r.spec.metrics]
    return {PREFIX + m.name for m in declared if m.legacy_name}


def promtool(text: bytes) -> list[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: `make test` installs Debian's prometheus package"
    result = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).decode().splitlines() if line.strip()]


def _raises() -> list[Sample]:
    raise ZeroDivisionError("division by zero")


def test_core_meta_metrics_are_lint_clean() -> None:
    exporter = make_exporter([FakePlugin("good").entry(), FakePlugin("bad", produce=_raises).entry()])
    exporter.start()
    try:
        problems = promtool(render(exporter.collect()))
    finally:
        exporter.stop()
    assert problems == []


def test_full_collection_is_lint_clean_but_for_seed_names() -> None:
    result = subprocess.run([CLI, "collect"], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert b"crusoe_vm_exporter_build_info" in result.stdout
    unexpected = [p for p in promtool(result.stdout) if p.split()[0] not in legacy_names()]
    assert unexpected == []


def test_every_declared_family_is_lint_clean_but_for_seed_names() -> None:
    """Every built-in's declarations, whether or not the plugin can run here (nvme, eBPF on other kernels)."""
    from crusoe_metrics_exporter.exposition import Scrape
    from crusoe_metrics_exporter.sdk import HistogramValue, MetricSpec

    groups: list[tuple[MetricSpec, Sequence[Sample]]] = []
    for rec in discover():
        if not rec.builtin or rec.spec is None:
            continue
        for spec in rec.spec.metrics:
            if spec.error_counter:
                continue
            value = HistogramValue((1,) * (len(spec.buckets) + 1), 1.0) if spec.type == "histogram" else 1.0
            groups.append((spec, [Sample(spec.name, tuple("x" for _ in spec.labels), value)]))
    assert any(spec.name == "nvme_info" for spec, _ in groups)
    unexpected = [p for p in promtool(render(Scrape(groups=groups))) if p.split()[0] not in legacy_names()]
    assert unexpected == []


def test_the_exporters_own_metrics_follow_the_rules_every_plugin_metric_does() -> None:
    from crusoe_metrics_exporter.meta import META_METRICS
    from crusoe_metrics_exporter.naming import validate_metric_spec

    for spec in META_METRICS:
        validate_metric_spec(spec)
        assert spec.name.startswith("exporter_") and not spec.legacy_name
