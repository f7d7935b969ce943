"""The trial: 1,024 object-store endpoints with 50 ports each gave 211k probe series, with no cap anywhere.

The probes collector's own output for that host (every endpoint failing, so
each has a failure counter too) goes through the real runner: it keeps
max_series_per_plugin series, counts the rest as series_limit and shows the
plugin degraded, while another plugin keeps its series.
"""

from __future__ import annotations

import logging
import re
import time
from types import SimpleNamespace

from helpers.fake_plugins import FakeEntryPoint, FakePlugin, make_exporter, plugin_module

from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.plugins.probes import METRICS, ProbeOptions
from crusoe_metrics_exporter.plugins.probes.collector import ProbesCollector
from crusoe_metrics_exporter.plugins.probes.results import HTTP, ICMP, TARGET_OBJSTORE, Outcome, ProbeKey, ProbeResult
from crusoe_metrics_exporter.sdk import PluginSpec, Support
from crusoe_metrics_exporter.testing import options_for

SERVERS, PORTS = 1024, 50
LIMIT = 100_000


def _trial_collector() -> ProbesCollector:
    ctx = SimpleNamespace(log=logging.getLogger("test.probes"), options=options_for(ProbeOptions))
    collector = ProbesCollector(ctx)  # type: ignore[arg-type]
    now = time.time()
    for i in range(SERVERS):
        address = f"10.1.{i // 256}.{i % 256}"
        collector.store.record(ProbeKey(ICMP, TARGET_OBJSTORE, address), ProbeResult(Outcome.failed("timeout", 1.0),
                                                                                     now))
        for port in range(8000, 8000 + PORTS):
            key = ProbeKey(HTTP, TARGET_OBJSTORE, address, port)
            collector.store.record(key, ProbeResult(Outcome.failed("refused", 0.001), now))
    return collector


def test_the_trials_probe_series_are_kept_to_the_series_limit() -> None:
    collector = _trial_collector()
    produced = len(list(collector.collect()))
    assert produced > 200_000, produced  # the trial's 211k

    spec: PluginSpec[None] = PluginSpec(
        name="probes", description="the probes collector over the trial's results", metrics=METRICS,
        factory=lambda ctx: SimpleNamespace(start=lambda: None, stop=lambda: None, collect=collector.collect),
        check_support=lambda ctx: Support.ok())
    entries = [(FakeEntryPoint("probes", lambda: plugin_module(lambda: spec)), "tests", "1.0"),
               FakePlugin("good").entry()]
    exporter = make_exporter(entries, max_series_per_plugin=str(LIMIT))
    exporter.start()
    try:
        text = render(exporter.collect()).decode()
    finally:
        exporter.stop()
    kept = len(re.findall(r"^crusoe_vm_(?:probe|objectstore)_[a-z_]+\{", text, re.M))
    assert kept == LIMIT
    dropped = re.search(r'^crusoe_vm_exporter_plugin_invalid_samples_total\{plugin="probes",reason="series_limit"\} '
                        r'(\S+)$', text, re.M)
    assert dropped and float(dropped.group(1)) == produced - LIMIT
    assert 'crusoe_vm_exporter_plugin_state{plugin="probes",state="degraded"} 1.0' in text
    assert 'crusoe_vm_good_value{device="vda"} 1.0' in text
