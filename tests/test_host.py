"""Discovery and validation: one bad plugin never takes the others down."""

from __future__ import annotations

import pytest
from helpers.fake_plugins import FakeEntryPoint, FakePlugin, plugin_module

from crusoe_metrics_exporter.host import OWN_DISTRIBUTION, discover
from crusoe_metrics_exporter.sdk import MetricSpec, PluginSpec, Support


def _by_name(records):  # type: ignore[no-untyped-def]
    return {r.name: r for r in records}


def test_plugins_load_in_name_order_with_distribution_and_version() -> None:
    records = discover([FakePlugin("zeta").entry(), FakePlugin("alpha").entry("alpha-dist")])
    assert [r.name for r in records] == ["alpha", "zeta"]
    alpha = records[0]
    assert (alpha.distribution, alpha.version, alpha.state) == ("alpha-dist", "1.0", "loaded")
    assert alpha.spec is not None and alpha.spec.metric("alpha_value").type == "gauge"


def test_import_error_is_reported_and_isolated() -> None:
    def explode() -> None:
        raise ImportError("No module named 'gpt4all'")

    records = _by_name(discover([FakePlugin("good").entry(), (FakeEntryPoint("broken", explode), "broken-dist", "2")]))
    assert records["good"].spec is not None
    broken = records["broken"]
    assert broken.state == "failed" and broken.failed_phase == "load"
    assert "No module named 'gpt4all'" in broken.reason


def test_module_without_hook_is_a_load_failure() -> None:
    import types

    records = discover([(FakeEntryPoint("empty", lambda: types.ModuleType("empty")), "d", "1")])
    assert records[0].state == "failed"
    assert "does not implement crusoe_metrics_exporter_plugin" in records[0].reason


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (MetricSpec("crusoe_vm_x_total", "counter", "h"), "without the 'crusoe_vm_' prefix"),
        (MetricSpec("x_events", "counter", "h"), "must end in _total"),
        (MetricSpec("x_bytes_total", "gauge", "h"), "only counters may end in _total"),
        (MetricSpec("x-bytes", "gauge", "h"), "not a valid Prometheus metric name"),
        (MetricSpec("x_bytes", "gauge", ""), "help text is required"),
        (MetricSpec("x_bytes", "gauge", "h", ("le",)), "reserved"),
        (MetricSpec("x_bytes", "gauge", "h", ("a", "a")), "declared twice"),
        (MetricSpec("x_seconds", "histogram", "h"), "needs bucket bounds"),
        (MetricSpec("x_seconds", "histogram", "h", buckets=(2.0, 1.0)), "strictly increasing"),
        (MetricSpec("x_seconds", "histogram", "h", buckets=(1.0, float("inf"))), "must be finite"),
        (MetricSpec("exporter_plugin_up", "gauge", "h"), "belong to the core"),
        (MetricSpec("x_bucket", "gauge", "h"), "reserved for histogram"),
    ],
)
def test_invalid_declarations_fail_validation_with_the_rule(metric: MetricSpec, message: str) -> None:
    plugin = FakePlugin("bad", metrics=(metric,))
    [rec] = discover([plugin.entry()])
    assert rec.state == "failed" and rec.failed_phase == "validate"
    assert message in rec.reason


def test_hook_returning_something_else_fails() -> None:
    [rec] = discover([(FakeEntryPoint("odd", lambda: plugin_module(lambda: {"name": "odd"})), "d", "1")])
    assert rec.state == "failed" and "not a PluginSpec" in rec.reason


def test_entry_point_and_spec_name_must_agree() -> None:
    spec = FakePlugin("inner").spec()
    [rec] = discover([(FakeEntryPoint("outer", lambda: plugin_module(lambda: spec)), "d", "1")])
    assert rec.state == "failed" and "declares a plugin named 'inner'" in rec.reason


def test_two_distributions_claiming_one_name_both_fail_by_name() -> None:
    records = discover([FakePlugin("dup").entry("first-dist"), FakePlugin("dup").entry("second-dist")])
    assert len(records) == 2
    for rec in records:
        assert rec.state == "failed"
        assert "'dup' is claimed by several distributions: first-dist, second-dist" in rec.reason


def test_duplicate_metric_keeps_the_builtin_owner() -> None:
    shared = MetricSpec("disk_reads_completed_total", "counter", "Reads.", ("device",))
    builtin = FakePlugin("zz_builtin", metrics=(shared,))
    third = FakePlugin("aa_third", metrics=(shared,))
    records = _by_name(discover([builtin.entry(OWN_DISTRIBUTION), third.entry("someone-else")]))
    assert records["zz_builtin"].state == "loaded"
    assert records["aa_third"].state == "failed"
    assert "already exported by plugin 'zz_builtin'" in records["aa_third"].reason


def test_contract_version_mismatch_is_refused_with_a_message() -> None:
    good = FakePlugin("future").spec()
    future = PluginSpec(**{**good.__dict__, "contract_version": 99})
    [rec] = discover([(FakeEntryPoint("future", lambda: plugin_module(lambda: future)), "d", "1")])
    assert rec.state == "failed" and "contract 99" in rec.reason


def test_bad_option_default_is_a_validation_failure() -> None:
    from crusoe_metrics_exporter.sdk import ConfigOption

    good = FakePlugin("opt").spec()
    spec = PluginSpec(**{**good.__dict__, "options": (ConfigOption("interval", "duration", "soon", "h"),)})
    [rec] = discover([(FakeEntryPoint("opt", lambda: plugin_module(lambda: spec)), "d", "1")])
    assert rec.state == "failed" and "interval" in rec.reason


def test_unsupported_plugin_keeps_its_reason() -> None:
    from helpers.fake_plugins import make_exporter

    plugin = FakePlugin("nobpf", support=Support.unsupported("needs root", fix="run as root"))
    exporter = make_exporter([plugin.entry()])
    exporter.start()
    [rec] = exporter.records
    assert (rec.state, rec.reason) == ("unsupported", "needs root")


def test_enable_naming_no_installed_plugin_is_refused() -> None:
    # A typo in enable used to disable every plugin silently: the exporter
    # served only its own metrics and exited 0.
    from helpers.fake_plugins import make_exporter

    from crusoe_metrics_exporter.options import SettingError

    entries = [FakePlugin("disk_stats").entry(), FakePlugin("probes").entry()]
    with pytest.raises(SettingError, match=r"^invalid CRUSOE_EXPORTER_ENABLE='disk_stat,probes': no installed "
                                           r"plugin named 'disk_stat' \(installed: disk_stats, probes\)$"):
        make_exporter(entries, {"CRUSOE_EXPORTER_ENABLE": "disk_stat,probes"})
    with pytest.raises(SettingError, match=r"^invalid --enable='nope'"):
        make_exporter(entries, enable="nope")
    exporter = make_exporter(entries, enable="probes", disable="not_installed_here")
    assert {r.name: r.state for r in exporter.records}["disk_stats"] == "disabled"
