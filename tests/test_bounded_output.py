"""Output is bounded: series per plugin, and the size of one exposition.

The trial: one million series from one plugin OOM-killed the exporter on the
first scrape; 10,000 plain NFS mounts gave 330k series and an OOM at the
fifth scrape. Here a plugin beyond its series limit keeps the limit, the rest
are counted and it shows degraded; a scrape beyond max_exposition_bytes
leaves groups out, counted; the other plugins keep every series.
"""

from __future__ import annotations

import logging
import re
import time
import tracemalloc

from helpers.fake_plugins import FakePlugin, make_exporter

from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.sdk import MetricSpec, Sample

MANY = MetricSpec("many_series", "gauge", "One series per n.", ("n",))


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m, f"{series} not in output"
    return float(m.group(1))


def test_a_million_series_keep_the_limit_and_cost_no_memory_beyond_it() -> None:
    def million():  # type: ignore[no-untyped-def]
        return (Sample("many_series", (str(i),), 1.0) for i in range(1_000_000))

    exporter = make_exporter([FakePlugin("many", produce=million, metrics=(MANY,)).entry(),
                              FakePlugin("good").entry()], max_series_per_plugin="10000",
                             # Validating a million samples takes seconds on a loaded 2-core VM: memory is the point.
                             collect_timeout="1m")
    exporter.start()
    try:
        tracemalloc.start()
        started = time.monotonic()
        text = render(exporter.collect()).decode()
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        exporter.stop()
    assert text.count("crusoe_vm_many_series{") == 10_000
    assert _value(text, 'crusoe_vm_exporter_plugin_invalid_samples_total{plugin="many",reason="series_limit"}') \
        == 990_000
    assert _value(text, 'crusoe_vm_exporter_plugin_state{plugin="many",state="degraded"}') == 1.0
    assert _value(text, 'crusoe_vm_good_value{device="vda"}') == 1.0
    rec = {r.name: r for r in exporter.records}["many"]
    assert "series_limit" in rec.reason
    # 10,000 kept series and their text: a few MiB, not the ~200 MiB a million would take.
    assert peak < 32 * 1024 * 1024, peak
    print(f"1M series: kept 10k, scrape {took:.2f}s, peak {peak / 2**20:.1f} MiB traced")


def test_a_scrape_beyond_max_exposition_bytes_leaves_groups_out_counted() -> None:
    wide = MetricSpec("wide_series", "gauge", "Long label values.", ("n",))
    other = MetricSpec("wide_other", "gauge", "More long label values.", ("n",))

    def big():  # type: ignore[no-untyped-def]
        label = "x" * 200
        return ([Sample("wide_series", (f"{label}{i}",), 1.0) for i in range(3500)]
                + [Sample("wide_other", (f"{label}{i}",), 1.0) for i in range(3500)])

    exporter = make_exporter([FakePlugin("wide", produce=big, metrics=(wide, other)).entry(),
                              FakePlugin("good").entry()], max_exposition_bytes=str(1024 * 1024))
    exporter.start()
    try:
        text = render(exporter.collect()).decode()
        second = render(exporter.collect()).decode()
    finally:
        exporter.stop()
    # One group of ~0.9 MB fits, the second does not; the small plugin and the exporter's own metrics always do.
    assert text.count("crusoe_vm_wide_series{") == 3500
    assert "crusoe_vm_wide_other{" not in text
    assert len(text.encode()) < 1024 * 1024 + 64 * 1024
    assert _value(text, 'crusoe_vm_good_value{device="vda"}') == 1.0
    assert _value(text, 'crusoe_vm_exporter_plugin_invalid_samples_total{plugin="wide",reason="exposition_limit"}') \
        == 3500
    assert _value(second, 'crusoe_vm_exporter_plugin_invalid_samples_total{plugin="wide",reason="exposition_limit"}'
                  ) == 7000
    assert _value(text, 'crusoe_vm_exporter_plugin_state{plugin="wide",state="degraded"}') == 1.0


def test_a_plugin_back_under_the_limits_is_active_again() -> None:
    rounds = iter([5000, 10])

    def shrinking():  # type: ignore[no-untyped-def]
        return [Sample("many_series", (str(i),), 1.0) for i in range(next(rounds, 10))]

    exporter = make_exporter([FakePlugin("many", produce=shrinking, metrics=(MANY,)).entry()],
                             max_series_per_plugin="1000")
    exporter.start()
    try:
        first = render(exporter.collect()).decode()
        second = render(exporter.collect()).decode()
    finally:
        exporter.stop()
    assert _value(first, 'crusoe_vm_exporter_plugin_state{plugin="many",state="degraded"}') == 1.0
    assert _value(second, 'crusoe_vm_exporter_plugin_state{plugin="many",state="active"}') == 1.0
    assert second.count("crusoe_vm_many_series{") == 10


def test_a_plugin_failing_every_scrape_is_logged_a_few_times_then_counted(caplog) -> None:  # type: ignore[no-untyped-def]
    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("the device is gone")

    exporter = make_exporter([FakePlugin("flaky", produce=boom).entry()])
    exporter.start()
    try:
        with caplog.at_level(logging.WARNING, logger="crusoe_metrics_exporter.runner"):
            for _ in range(50):
                text = render(exporter.collect()).decode()
    finally:
        exporter.stop()
    assert len([r for r in caplog.records if "collect failed" in r.getMessage()]) == 3
    assert _value(text, 'crusoe_vm_exporter_plugin_errors_total{phase="collect",plugin="flaky"}') == 50
