"""objstore parsing, declarations and the no-endpoint rule (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.exporter_scrape import fake_proc

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.plugins import objstore
from crusoe_metrics_exporter.plugins._tcptrace.addresses import address_key
from crusoe_metrics_exporter.plugins.objstore.parser import BUCKETS, SLOTS, STATS_VALUE, parse_stats_entry
from crusoe_metrics_exporter.testing import check_declaration


def test_buckets_are_the_seed_constants() -> None:
    # round(1000 * 10^(k/6)) microseconds: six per decade, 1 ms .. 1.468 s.
    assert (*tuple(round(1000 * 10 ** (k / 6)) / 1000000.0 for k in range(19)), 1.468) == BUCKETS
    spec = objstore.crusoe_metrics_exporter_plugin()
    assert spec.metric("objectstore_connection_latency_histogram_seconds").buckets == BUCKETS
    check_declaration(spec)


def test_parse_stats_entry() -> None:
    counts = tuple(range(SLOTS))
    raw = STATS_VALUE.pack(5, 1, 1000, 2000, *counts)
    r = parse_stats_entry(address_key("::1"), raw)
    assert (r.address, r.latency_ns, r.retransmits, r.bytes_sent, r.bytes_recv, r.counts) == (
        "::1", 5, 1, 1000, 2000, counts)
    with pytest.raises(ValueError):
        parse_stats_entry(address_key("::1"), raw + b"\x00")


def test_unsupported_without_an_endpoint(tmp_path: Path) -> None:
    exporter = Exporter.from_environment(environ={"HOST_PROC_PATH": str(fake_proc(tmp_path / "proc"))})
    try:
        exporter.start(only=["objstore"])
        rec = next(r for r in exporter.records if r.name == "objstore")
        assert rec.state == "unsupported"
        assert rec.reason.startswith("no endpoint configured")
    finally:
        exporter.stop()


@pytest.mark.parametrize("option", ["inflight_capacity=0", "inflight_capacity=-5", "latency_clamp=0s"])
@pytest.mark.parametrize("plugin", ["nfs_latency", "objstore"])
def test_unusable_kernel_sizes_and_clamps_stop_start_up(plugin: str, option: str) -> None:
    """An empty in-flight map cannot be created and a zero clamp records every latency as 0."""
    from crusoe_metrics_exporter.options import SettingError
    from crusoe_metrics_exporter.plugins import nfs_latency, objstore
    from crusoe_metrics_exporter.testing import options_for

    options: type[nfs_latency.NfsLatencyOptions] | type[objstore.ObjstoreOptions] = (
        nfs_latency.NfsLatencyOptions if plugin == "nfs_latency" else objstore.ObjstoreOptions)
    key, _, text = option.partition("=")
    with pytest.raises(SettingError, match=key):
        options_for(options, {key: text})
    smallest = options_for(options, {"inflight_capacity": "1", "latency_clamp": "1ms"})
    assert (smallest.inflight_capacity, smallest.latency_clamp) == (1, 0.001)
