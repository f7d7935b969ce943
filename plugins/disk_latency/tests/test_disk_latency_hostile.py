"""disk_latency's device table on a hostile HOST_PROC_PATH (real eBPF).

The trial: a FIFO in place of diskstats wedged disk_latency for good (every
scrape took the full 5 s collect timeout and its series were lost), and at
start-up the exporter never listened. The device table is now read with the
bounded reader: a FIFO (or /dev/zero, a directory, a loop) is an error,
counted, and the last good table stays in use.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.procfs_tree import HOSTILE_KINDS, build_tree, make_hostile, remove

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.plugins.disk_latency import collector as collector_module
from crusoe_metrics_exporter.plugins.disk_latency.collector import DiskLatencyCollector
from crusoe_metrics_exporter.settings import Overrides

pytestmark = pytest.mark.ebpf

ERRORS = "disk_collection_errors_total"  # the seed's name


def test_a_hostile_diskstats_at_start_up_and_while_running_costs_no_scrape_time(
    require_ebpf: None, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The table is re-read on the plugin's thread when a scrape finds it older than 0.1 s; a scrape never reads it.
    monkeypatch.setattr(collector_module, "TABLE_REFRESH_SECONDS", 0.1)
    tree = build_tree(tmp_path / "proc")
    good = (tree / "diskstats").read_bytes()
    make_hostile(tree / "diskstats", "fifo")
    exporter = Exporter.from_environment(
        environ={"HOST_PROC_PATH": str(tree), "CRUSOE_EXPORTER_STATE_DIR": str(state_dir)},
        overrides=Overrides({"exporter.collect_timeout": "2s"}))
    try:
        assert exporter.begin_start(only=["disk_latency"]).wait(120), "start-up hung on the FIFO"
        rec = next(r for r in exporter.records if r.name == "disk_latency")
        assert rec.state == "active", rec.reason
        assert isinstance(rec.collector, DiskLatencyCollector)
        assert rec.errors is not None
        errors_at_start = rec.errors.metric_totals()[ERRORS]
        assert errors_at_start >= 1  # the unreadable table was counted, not waited for

        def good_again() -> None:
            remove(tree / "diskstats")
            (tree / "diskstats").write_bytes(good)
            deadline = time.monotonic() + 5.0
            while 'device="vda"' not in render(exporter.collect(only=["disk_latency"])).decode():
                assert time.monotonic() < deadline, "the timer never read the good table"
                time.sleep(0.05)

        good_again()
        for kind in HOSTILE_KINDS:
            make_hostile(tree / "diskstats", kind)
            before = rec.errors.metric_totals()[ERRORS]
            # Scrapes while the timer meets the bad table: each fast, the plugin up, and the
            # problem counted by the timer (a huge file is read up to the limit and parsed).
            deadline = time.monotonic() + (0.5 if kind == "huge" else 5.0)
            counted = False
            while not counted and time.monotonic() < deadline:
                started = time.monotonic()
                text = render(exporter.collect(only=["disk_latency"])).decode()
                took = time.monotonic() - started
                assert took < 1.0, (kind, took)
                assert 'crusoe_vm_exporter_plugin_up{plugin="disk_latency"} 1.0' in text, kind
                counted = rec.errors.metric_totals()[ERRORS] > before
                time.sleep(0.05)
            assert counted or kind == "huge", kind
            # the last good table stays in use: the tree's disks keep their series
            assert 'device="vda"' in text, kind
            good_again()
    finally:
        exporter.stop()
