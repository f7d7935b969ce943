"""Discovery and validation: one bad plugin never takes the others down."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from helpers.fake_plugins import FakeEntryPoint, FakePlugin, plugin_module

from crusoe_metrics_exporter.host import OWN_DISTRIBUTION, PluginRecord, ServiceRecord, discover
from crusoe_metrics_exporter.sdk import (
    MetricSpec,
    OptionError,
    PluginSpec,
    ServiceContext,
    ServiceSpec,
    Support,
    hookimpl,
    option,
)

_R = TypeVar("_R", bound=PluginRecord | ServiceRecord)


def _by_name(records: Iterable[_R]) -> dict[str, _R]:
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
        (MetricSpec("exporter_plugin_up", "gauge", "h"), "belong to the exporter"),
        (MetricSpec("x_bucket", "gauge", "h"), "reserved for histogram"),
        (MetricSpec("x_info", "histogram", "h", buckets=(1.0,)), "only an info gauge"),
    ],
)
def test_invalid_declarations_fail_validation_with_the_rule(metric: MetricSpec, message: str) -> None:
    plugin = FakePlugin("bad", metrics=(metric,))
    [rec] = discover([plugin.entry()])
    assert rec.state == "failed" and rec.failed_phase == "validate"
    assert message in rec.reason


def test_an_info_gauge_may_end_in_info() -> None:
    # The info-metric convention (the seed's nvme_info): value 1, the facts in labels.
    plugin = FakePlugin("ident", metrics=(MetricSpec("ident_info", "gauge", "h", ("serial",)),
                                         MetricSpec.errors("ident_collection_errors_total", "e")))
    [rec] = discover([plugin.entry()])
    assert rec.state != "failed", rec.reason


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


def _with_options(options: object) -> PluginRecord:
    good = FakePlugin("opt").spec()
    spec = PluginSpec(**{**good.__dict__, "options": options})
    [rec] = discover([(FakeEntryPoint("opt", lambda: plugin_module(lambda: spec)), "d", "1")])
    return rec


def test_bad_option_default_is_a_validation_failure() -> None:
    @dataclass(frozen=True)
    class Bad:
        interval: float = option("duration", cast(float, "soon"), "h")

    rec = _with_options(Bad)
    assert (rec.state, rec.failed_phase) == ("failed", "validate")
    assert rec.reason == "invalid default of option interval='soon': expected a duration such as 30s, 5m or 1h30m"


def test_options_must_be_a_dataclass_of_declared_fields() -> None:
    class NotADataclass:
        interval = 1.0

    @dataclass(frozen=True)
    class Undeclared:
        interval: float = 1.0

    assert "must be a dataclass type" in _with_options(NotADataclass).reason
    assert _with_options(Undeclared).reason == "options field 'interval' is not declared with option(...)"


@dataclass(frozen=True)
class RangeOptions:
    low: int = option("int", 1, "Lower bound.")
    high: int = option("int", 10, "Upper bound.", env="FAKE_HIGH")

    def __post_init__(self) -> None:
        if self.high < self.low:
            raise OptionError("high", f"expected at least low ({self.low})")


def _range_plugin(post_init_bug: bool = False) -> tuple[FakeEntryPoint, str, str]:
    good = FakePlugin("ranged").spec()
    options: type = RangeOptions
    if post_init_bug:
        @dataclass(frozen=True)
        class Buggy(RangeOptions):
            def __post_init__(self) -> None:
                raise KeyError("oops")
        options = Buggy
    spec = PluginSpec(**{**good.__dict__, "options": options})
    return FakeEntryPoint("ranged", lambda: plugin_module(lambda: spec)), "d", "1"


def test_options_arrive_typed_and_a_refused_combination_stops_start_up_naming_the_setting() -> None:
    from helpers.fake_plugins import make_exporter

    from crusoe_metrics_exporter.host import make_context
    from crusoe_metrics_exporter.options import SettingError

    exporter = make_exporter([_range_plugin()], {"FAKE_HIGH": "20"})
    [rec] = exporter.records
    ctx = make_context(rec, exporter.settings, exporter.services)
    assert ctx.options == RangeOptions(1, 20)
    with pytest.raises(SettingError, match=r"^invalid FAKE_HIGH='0': expected at least low \(1\)$"):
        make_exporter([_range_plugin()], {"FAKE_HIGH": "0"})


def test_an_options_class_that_raises_something_else_fails_only_its_plugin(caplog: pytest.LogCaptureFixture) -> None:
    from helpers.fake_plugins import make_exporter

    exporter = make_exporter([_range_plugin(post_init_bug=True), FakePlugin("fine").entry()])
    records = _by_name(exporter.records)
    assert records["ranged"].state == "failed" and records["ranged"].failed_phase == "validate"
    assert records["ranged"].reason == "its options class raised KeyError: 'oops'"
    assert records["fine"].state == "loaded"
    assert "test_host.py:" in caplog.text  # the warning names where it was raised


def test_import_failure_logs_the_failing_line_at_warning_and_the_traceback_at_debug(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_plugin_mod.py").write_text("import json\nimport no_such_module_here  # line 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class FileEntryPoint(FakeEntryPoint):
        def load(self) -> Any:
            import importlib

            return importlib.import_module("broken_plugin_mod")

    caplog.set_level(logging.DEBUG, logger="crusoe_metrics_exporter.host")
    [rec] = discover([(FileEntryPoint("broken", lambda: None), "d", "1")])
    assert rec.reason == "ModuleNotFoundError: No module named 'no_such_module_here'"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().endswith(f"(at {tmp_path / 'broken_plugin_mod.py'}:2)")
    [debug] = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug.exc_info is not None and "Traceback" in caplog.text


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


# -- shared services -------------------------------------------------------------
@dataclass(frozen=True)
class CacheOptions:
    size: int = option("int", 8, "Entries kept.", env="FAKE_CACHE_SIZE", minimum=1)


class Cache:
    def __init__(self, ctx: ServiceContext[CacheOptions]) -> None:
        self.size = ctx.options.size
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def _service_entry(spec_factory: Any, name: str = "cache") -> tuple[FakeEntryPoint, str, str]:
    module = types.ModuleType("fake_service")
    module.crusoe_metrics_exporter_service = hookimpl(spec_factory)  # type: ignore[attr-defined]
    return FakeEntryPoint(name, lambda: module), "svc-dist", "2.0"


def _cache_user(seen: list[Any]) -> tuple[FakeEntryPoint, str, str]:
    plugin = FakePlugin("user", on_start=lambda: None)
    spec = plugin.spec()

    def factory(ctx: Any) -> Any:
        seen.append(ctx.service("cache", Cache))
        return spec.factory(ctx)

    user = PluginSpec(**{**spec.__dict__, "factory": factory})
    return FakeEntryPoint("user", lambda: plugin_module(lambda: user)), "d", "1"


def test_a_service_registered_through_its_hook_gets_its_own_table_and_is_built_once_on_demand() -> None:
    from crusoe_metrics_exporter.app import Exporter
    from crusoe_metrics_exporter.settings import Overrides

    entry = _service_entry(lambda: ServiceSpec("cache", "A cache.", Cache, options=CacheOptions))
    seen: list[Any] = []
    exporter = Exporter.from_environment(None, Overrides({"cache.size": "32"}), {"HOST_PROC_PATH": "/proc"},
                                         [_cache_user(seen)], [entry])
    assert exporter.settings.sources["cache.size"] == "command line"
    assert exporter.services.built() == {}  # nothing built before a plugin asks
    exporter.start()
    [cache] = seen
    assert isinstance(cache, Cache) and cache.size == 32
    exporter.stop()
    assert cache.stopped


def test_a_broken_service_fails_the_plugins_that_need_it_with_its_reason() -> None:
    from crusoe_metrics_exporter.app import Exporter
    from crusoe_metrics_exporter.settings import Overrides

    def broken() -> ServiceSpec[Any]:
        raise ImportError("libcache.so.1: cannot open shared object file")

    exporter = Exporter.from_environment(None, Overrides({}), {"HOST_PROC_PATH": "/proc"},
                                         [_cache_user([]), FakePlugin("other").entry()], [_service_entry(broken)])
    [svc] = exporter.service_records
    assert svc.state == "failed" and svc.reason == "ImportError: libcache.so.1: cannot open shared object file"
    exporter.start()
    records = _by_name(exporter.records)
    assert records["user"].state == "failed"
    assert records["user"].reason == ("ServiceUnavailable: shared service 'cache' is unavailable: "
                                      "ImportError: libcache.so.1: cannot open shared object file")
    assert records["other"].state == "active"
    exporter.stop()


@pytest.mark.parametrize(("name", "message"), [("exporter", "reserved"), ("plugins", "reserved")])
def test_service_names_of_the_exporters_own_tables_are_refused(name: str, message: str) -> None:
    from crusoe_metrics_exporter.host import discover_services

    [rec] = discover_services([_service_entry(lambda: ServiceSpec(name, "d", Cache), name)])
    assert rec.state == "failed" and message in rec.reason


def test_the_builtin_services_register_through_entry_points() -> None:
    from helpers.builtins import builtin_services

    from crusoe_metrics_exporter.host import discover_services

    records = _by_name(discover_services())
    assert set(records) >= builtin_services()
    for name in builtin_services():
        assert records[name].state == "loaded" and records[name].builtin, records[name].reason


class CountingCache(Cache):
    """A service that exports metrics of its own, one of them wrong once."""

    def __init__(self, ctx: ServiceContext[CacheOptions]) -> None:
        super().__init__(ctx)
        self.fail = False

    def collect(self) -> list[Any]:
        from crusoe_metrics_exporter.sdk import Sample

        if self.fail:
            raise OSError("cache stats unreadable")
        return [Sample("exporter_cache_entries", (), float(self.size)), Sample("exporter_cache_hits_total", (), -1.0)]


def test_service_metrics_go_through_validation_and_the_one_renderer(caplog: pytest.LogCaptureFixture) -> None:
    from crusoe_metrics_exporter.app import Exporter
    from crusoe_metrics_exporter.exposition import render
    from crusoe_metrics_exporter.settings import Overrides

    metrics = (MetricSpec("exporter_cache_entries", "gauge", "Entries."),
               MetricSpec("exporter_cache_hits_total", "counter", "Hits."))
    entry = _service_entry(lambda: ServiceSpec("cache", "A cache.", CountingCache, options=CacheOptions,
                                               metrics=metrics))
    seen: list[Any] = []
    exporter = Exporter.from_environment(None, Overrides({}), {"HOST_PROC_PATH": "/proc"}, [_cache_user(seen)],
                                         [entry])
    exporter.start()
    try:
        text = render(exporter.collect()).decode()
        om = render(exporter.collect(), openmetrics=True).decode()
        assert "# TYPE crusoe_vm_exporter_cache_entries gauge\ncrusoe_vm_exporter_cache_entries 8.0\n" in text
        assert "crusoe_vm_exporter_cache_hits_total" not in text  # -1 is no counter value
        assert "# TYPE crusoe_vm_exporter_cache_entries gauge" in om and om.endswith("# EOF\n")
        [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert error == ("service cache: dropped invalid sample exporter_cache_hits_total = -1.0: counter values "
                         "must not be negative (negative_counter)")
        seen[0].fail = True
        text = render(exporter.collect()).decode()
        assert "crusoe_vm_exporter_cache_entries" not in text and "crusoe_vm_exporter_plugin_up" in text
        assert "service cache: collecting its metrics failed: OSError: cache stats unreadable" in caplog.text
    finally:
        exporter.stop()
