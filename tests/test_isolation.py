"""A plugin that raises, hangs or lies never costs the others their output."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.fake_plugins import FakePlugin, make_exporter

from crusoe_metrics_exporter.app import StrictModeError
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.runner import RULES
from crusoe_metrics_exporter.sdk import HistogramValue, MetricSpec, Sample


def _text(exporter) -> str:  # type: ignore[no-untyped-def]
    return render(exporter.collect()).decode()


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in output:\n{text}")


def test_raising_plugin_is_isolated_and_its_error_counter_accumulates() -> None:
    def boom() -> list[Sample]:
        raise RuntimeError("parser exploded")

    exporter = make_exporter([FakePlugin("good").entry(), FakePlugin("bad", produce=boom).entry()])
    exporter.start()
    try:
        first = _text(exporter)
        assert _value(first, 'crusoe_vm_good_value{device="vda"}') == 1.0
        assert _value(first, "crusoe_vm_bad_collection_errors_total") == 1.0
        assert _value(first, 'crusoe_vm_exporter_plugin_up{plugin="bad"}') == 0.0
        assert _value(first, 'crusoe_vm_exporter_plugin_up{plugin="good"}') == 1.0
        second = _text(exporter)
        assert _value(second, "crusoe_vm_bad_collection_errors_total") == 2.0
        assert _value(second, 'crusoe_vm_exporter_plugin_errors_total{phase="collect",plugin="bad"}') == 2.0
    finally:
        exporter.stop()


def test_hanging_plugin_times_out_without_a_thread_per_scrape() -> None:
    release = threading.Event()

    def hang() -> list[Sample]:
        release.wait(30)
        return []

    slow = FakePlugin("slow", produce=hang)
    exporter = make_exporter([FakePlugin("good").entry(), slow.entry()], collect_timeout="300ms")
    exporter.start()
    try:
        threads_before = threading.active_count()
        for _ in range(4):
            started = time.monotonic()
            text = _text(exporter)
            assert time.monotonic() - started < 2.0
            assert _value(text, 'crusoe_vm_good_value{device="vda"}') == 1.0
            assert _value(text, 'crusoe_vm_exporter_plugin_up{plugin="slow"}') == 0.0
        # One stuck collect, shared by every later scrape: one call, one worker.
        assert slow.collectors[0].calls == 1
        assert threading.active_count() <= threads_before + 2
        assert _value(text, 'crusoe_vm_exporter_plugin_errors_total{phase="timeout",plugin="slow"}') == 4.0
        release.set()
        time.sleep(0.1)
        text = _text(exporter)
        assert _value(text, 'crusoe_vm_exporter_plugin_up{plugin="slow"}') == 1.0
    finally:
        release.set()
        exporter.stop()


HIST = MetricSpec("liar_seconds", "histogram", "h", ("op",), buckets=(0.1, 1.0))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Sample("liar_undeclared", (), 1.0), "unknown_metric"),
        (Sample("liar_value", (), 1.0), "label_count"),  # missing label
        (Sample("liar_value", ("vda", "extra"), 1.0), "label_count"),
        (Sample("liar_value", (7,), 1.0), "label_type"),  # type: ignore[arg-type]
        # A lone surrogate (os.fsdecode of a non-UTF-8 name) cannot be encoded:
        # it used to pass validation and turn the whole scrape into a 500.
        (Sample("liar_value", ("/mnt/\udcff",), 1.0), "label_encoding"),
        # An int beyond float range (a 400-digit field parsed with int()) used
        # to pass validation and fail the whole scrape with OverflowError.
        (Sample("liar_value", ("vda",), 10**400), "overflow"),
        (Sample("liar_events_total", (), 10**400), "overflow"),
        (Sample("liar_seconds", ("read",), HistogramValue((1, 10**400, 0), 0.5)), "histogram_counts"),
        (Sample("liar_value", ("vda",), float("nan")), "nan"),
        (Sample("liar_value", ("vda",), "12"), "value_type"),  # type: ignore[arg-type]
        (Sample("liar_events_total", (), -1.0), "negative_counter"),
        (Sample("liar_events_total", (), float("inf")), "infinite_counter"),
        (Sample("liar_seconds", ("read",), HistogramValue((1, 2), 0.5)), "histogram_buckets"),  # no overflow
        (Sample("liar_seconds", ("read",), HistogramValue((1, -2, 0), 0.5)), "histogram_counts"),
        (Sample("liar_seconds", ("read",), HistogramValue((1, 2, 0), float("nan"))), "histogram_sum"),
        (Sample("liar_seconds", ("read",), 3.0), "value_type"),
        (Sample("liar_collection_errors_total", (), 5.0), "error_counter"),  # the core owns error counters
        (("not", "a sample"), "not_a_sample"),
    ],
)
def test_malformed_samples_are_dropped_counted_by_reason_and_the_rest_kept(
    bad: Sample, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = Sample("liar_value", ("vdb",), 2.0)
    plugin = FakePlugin("liar", produce=lambda: [bad, good],
                        metrics=(*FakePlugin("x").metrics, HIST))
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    try:
        text = _text(exporter)
        assert _value(text, 'crusoe_vm_liar_value{device="vdb"}') == 2.0
        assert _value(text, 'crusoe_vm_exporter_plugin_errors_total{phase="invalid_sample",plugin="liar"}') == 1.0
        invalid = f'crusoe_vm_exporter_plugin_invalid_samples_total{{plugin="liar",reason="{reason}"}}'
        assert _value(text, invalid) == 1.0
        assert "liar_undeclared" not in text
        assert _value(text, "crusoe_vm_liar_collection_errors_total") == 0.0
        [rec] = exporter.records
        assert rec.state == "degraded" and f"({reason})" in rec.reason
        assert _value(text, 'crusoe_vm_exporter_plugin_state{plugin="liar",state="degraded"}') == 1.0
        assert _value(text, 'crusoe_vm_exporter_plugin_up{plugin="liar"}') == 1.0
        [line] = [r.getMessage() for r in caplog.records if "dropped invalid sample" in r.getMessage()]
        assert f"({reason})" in line and RULES[reason] in line
    finally:
        exporter.stop()


def test_invalid_sample_log_names_metric_labels_value_and_rule_once_then_summarises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = [Sample("psi_value", ("cpu",), -1.0), Sample("psi_events_total", (), -5.0)]
    clean = [False]
    plugin = FakePlugin("psi", produce=lambda: [] if clean[0] else bad)
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    try:
        exporter.collect()
        [first] = [r for r in caplog.records if "dropped invalid sample" in r.getMessage()]
        assert first.levelname == "WARNING"
        assert first.getMessage().startswith(
            "plugin psi: dropped invalid sample psi_events_total = -5.0: counter values must not be negative "
            "(negative_counter); further drops of this kind are counted in "
            "crusoe_vm_exporter_plugin_invalid_samples_total{plugin='psi',reason='negative_counter'}")
        caplog.clear()
        for _ in range(3):
            exporter.collect()  # repeats: counted, not logged again within the summary interval
        assert not [r for r in caplog.records if r.name == "crusoe_metrics_exporter.runner"]
        runner = exporter.runners["psi"]
        monkeypatch.setattr(runner, "_summary_due", 0.0)
        exporter.collect()
        [summary] = [r.getMessage() for r in caplog.records if "more invalid samples" in r.getMessage()]
        assert summary == "plugin psi: dropped 4 more invalid samples since the last report (negative_counter: 4)"
        text = _text(exporter)
        assert _value(text, 'crusoe_vm_exporter_plugin_invalid_samples_total{plugin="psi",reason="negative_counter"}'
                      ) == 6.0
        clean[0] = True
        text = _text(exporter)
        assert exporter.records[0].state == "active"
        assert _value(text, 'crusoe_vm_exporter_plugin_state{plugin="psi",state="active"}') == 1.0
    finally:
        exporter.stop()


def test_duplicate_series_are_dropped() -> None:
    plugin = FakePlugin("twice", produce=lambda: [Sample("twice_value", ("vda",), 1.0)] * 2)
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    text = _text(exporter)
    assert text.count('crusoe_vm_twice_value{device="vda"}') == 1
    assert _value(text, 'crusoe_vm_exporter_plugin_errors_total{phase="invalid_sample",plugin="twice"}') == 1.0


def test_histogram_samples_become_cumulative_buckets_with_exact_sum() -> None:
    plugin = FakePlugin("lat", produce=lambda: [Sample("lat_seconds", ("read",), HistogramValue((2, 3, 4), 9.25))],
                        metrics=(MetricSpec("lat_seconds", "histogram", "Latency.", ("op",), buckets=(0.1, 1.0)),))
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    text = _text(exporter)
    assert _value(text, 'crusoe_vm_lat_seconds_bucket{le="0.1",op="read"}') == 2.0
    assert _value(text, 'crusoe_vm_lat_seconds_bucket{le="1.0",op="read"}') == 5.0
    assert _value(text, 'crusoe_vm_lat_seconds_bucket{le="+Inf",op="read"}') == 9.0
    assert _value(text, 'crusoe_vm_lat_seconds_count{op="read"}') == 9.0
    assert _value(text, 'crusoe_vm_lat_seconds_sum{op="read"}') == 9.25


def test_start_failure_leaves_others_serving_and_strict_mode_refuses() -> None:
    def fail_start() -> None:
        raise OSError("cannot attach")

    entries = [FakePlugin("good").entry(), FakePlugin("fragile", on_start=fail_start).entry()]
    exporter = make_exporter(entries)
    exporter.start()
    states = {r.name: (r.state, r.reason) for r in exporter.records}
    assert states["fragile"] == ("failed", "OSError: cannot attach")
    text = _text(exporter)
    assert _value(text, 'crusoe_vm_good_value{device="vda"}') == 1.0
    assert _value(text, 'crusoe_vm_exporter_plugin_state{plugin="fragile",state="failed"}') == 1.0
    exporter.stop()

    strict = make_exporter(entries, strict="true")
    with pytest.raises(StrictModeError, match="fragile"):
        strict.start()
    strict.stop()


def test_support_check_that_raises_is_a_failure_not_a_crash() -> None:
    plugin = FakePlugin("moody")
    spec = plugin.spec()

    def raising(ctx):  # type: ignore[no-untyped-def]
        raise PermissionError("no /sys access")

    from dataclasses import replace

    from helpers.fake_plugins import FakeEntryPoint, plugin_module

    entry = (FakeEntryPoint("moody", lambda: plugin_module(lambda: replace(spec, check_support=raising))), "d", "1")
    exporter = make_exporter([entry, FakePlugin("good").entry()])
    exporter.start()
    rec = {r.name: r for r in exporter.records}["moody"]
    assert rec.state == "failed" and "PermissionError: no /sys access" in rec.reason
    assert "crusoe_vm_good_value" in _text(exporter)


def test_disabled_plugins_are_listed_and_not_started() -> None:
    plugin = FakePlugin("quiet")
    exporter = make_exporter([plugin.entry(), FakePlugin("good").entry()], disable="quiet")
    exporter.start()
    rec = {r.name: r for r in exporter.records}["quiet"]
    assert (rec.state, rec.reason) == ("disabled", "disabled by configuration")
    assert plugin.collectors == []
    text = _text(exporter)
    assert _value(text, 'crusoe_vm_exporter_plugin_state{plugin="quiet",state="disabled"}') == 1.0


def test_concurrent_scrapes_are_safe() -> None:
    exporter = make_exporter([FakePlugin("good").entry()])
    exporter.start()
    outputs: list[str] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            outputs.append(_text(exporter))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(outputs) == 16
    assert all('crusoe_vm_good_value{device="vda"} 1.0' in o for o in outputs)


def test_non_ascii_label_values_are_kept() -> None:
    plugin = FakePlugin("intl", produce=lambda: [Sample("intl_value", ("/mnt/données",), 3.0)])
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    try:
        assert _value(_text(exporter), 'crusoe_vm_intl_value{device="/mnt/données"}') == 3.0
    finally:
        exporter.stop()


def test_concurrent_scrapes_share_one_in_flight_collect() -> None:
    # The README's promise; the test above would pass with a collect per scrape.
    def slow() -> list[Sample]:
        time.sleep(0.5)
        return [Sample("shared_value", ("vda",), 1.0)]

    plugin = FakePlugin("shared", produce=slow)
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    try:
        barrier = threading.Barrier(8)
        outputs: list[str] = []

        def scrape() -> None:
            barrier.wait()
            outputs.append(_text(exporter))

        threads = [threading.Thread(target=scrape) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(outputs) == 8 and all('crusoe_vm_shared_value{device="vda"} 1.0' in o for o in outputs)
        assert plugin.collectors[0].calls == 1
    finally:
        exporter.stop()


def test_plugin_calling_sys_exit_in_collect_costs_only_its_own_series() -> None:
    # SystemExit is not an Exception: it used to travel from the worker to the
    # scrape thread, so every scrape ended without a response.
    def leave() -> list[Sample]:
        raise SystemExit(3)

    exporter = make_exporter([FakePlugin("good").entry(), FakePlugin("quitter", produce=leave).entry()])
    exporter.start()
    try:
        text = _text(exporter)
        assert _value(text, 'crusoe_vm_good_value{device="vda"}') == 1.0
        assert _value(text, 'crusoe_vm_exporter_plugin_errors_total{phase="collect",plugin="quitter"}') == 1.0
    finally:
        exporter.stop()


def test_support_check_that_blocks_fails_the_plugin_not_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from helpers.fake_plugins import FakeEntryPoint, plugin_module

    from crusoe_metrics_exporter import host

    monkeypatch.setattr(host, "SUPPORT_CHECK_TIMEOUT", 0.3)
    release = threading.Event()
    spec = FakePlugin("stuck").spec()

    def blocking(ctx):  # type: ignore[no-untyped-def]
        release.wait(30)  # e.g. open() on a FIFO where a kernel file was expected

    entry = (FakeEntryPoint("stuck", lambda: plugin_module(lambda: replace(spec, check_support=blocking))), "d", "1")
    exporter = make_exporter([entry, FakePlugin("good").entry()])
    started = time.monotonic()
    exporter.start()
    try:
        assert time.monotonic() - started < 5
        rec = {r.name: r for r in exporter.records}["stuck"]
        assert rec.state == "failed" and "did not answer within 0.3s" in rec.reason
        assert "crusoe_vm_good_value" in _text(exporter)
    finally:
        release.set()
        exporter.stop()
