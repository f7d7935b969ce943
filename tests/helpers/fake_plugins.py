"""Synthetic plugins behind synthetic entry points, for tests of the core."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.sdk import MetricSpec, NoOptions, PluginContext, PluginSpec, Sample, Support, hookimpl
from crusoe_metrics_exporter.settings import Overrides

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "crusoe-metrics-exporter")


@dataclass
class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint for host.discover()."""

    name: str
    loader: Callable[[], Any]
    value: str = "tests:fake"

    def load(self) -> Any:
        return self.loader()


def plugin_module(spec_factory: Callable[[], Any]) -> types.ModuleType:
    """A module object implementing the hook, as a plugin package would."""
    module = types.ModuleType("fake_plugin")

    @hookimpl
    def crusoe_metrics_exporter_plugin() -> Any:
        return spec_factory()

    module.crusoe_metrics_exporter_plugin = crusoe_metrics_exporter_plugin  # type: ignore[attr-defined]
    return module


@dataclass
class ScriptedCollector:
    """A collector whose behaviour each test scripts."""

    produce: Callable[[], Iterable[Sample]]
    calls: int = 0
    started: bool = False
    stopped: bool = False
    on_start: Callable[[], None] | None = None

    def start(self) -> None:
        if self.on_start:
            self.on_start()
        self.started = True

    def collect(self) -> Iterable[Sample]:
        self.calls += 1
        return self.produce()

    def stop(self) -> None:
        self.stopped = True


GAUGE = MetricSpec("fake_value", "gauge", "A value for tests.", ("device",))
COUNTER = MetricSpec("fake_events_total", "counter", "Events for tests.")
ERRORS = MetricSpec.errors("fake_collection_errors_total", "Errors of the fake plugin.")


@dataclass
class FakePlugin:
    name: str
    #: Defaults to one good gauge sample ``<name>_value{device="vda"} 1``.
    produce: Callable[[], Iterable[Sample]] | None = None
    metrics: tuple[MetricSpec, ...] = (GAUGE, COUNTER, ERRORS)
    support: Support = field(default_factory=Support.ok)
    on_start: Callable[[], None] | None = None
    collectors: list[ScriptedCollector] = field(default_factory=list)

    def spec(self) -> PluginSpec[NoOptions]:
        produce = self.produce or (lambda: [Sample(f"{self.name}_value", ("vda",), 1.0)])

        def factory(ctx: PluginContext[NoOptions]) -> ScriptedCollector:
            c = ScriptedCollector(produce, on_start=self.on_start)
            self.collectors.append(c)
            return c

        return PluginSpec(
            name=self.name,
            description="fake",
            metrics=tuple(replace(m, name=m.name.replace("fake", self.name)) for m in self.metrics),
            factory=factory,
            check_support=lambda ctx: self.support,
        )

    def entry(self, dist: str = "fake-dist") -> tuple[FakeEntryPoint, str, str]:
        return FakeEntryPoint(self.name, lambda: plugin_module(self.spec)), dist, "1.0"


def make_exporter(entries: list[tuple[Any, str, str]], environ: dict[str, str] | None = None,
                  **overrides: str) -> Exporter:
    """An Exporter over ``entries``; ``overrides`` are ``[exporter]`` options as text."""
    env = {"HOST_PROC_PATH": "/proc"} | (environ or {})
    values = {f"exporter.{k}": v for k, v in overrides.items()}
    exporter = Exporter.from_environment(None, Overrides(values), env, entries)
    # Loaded now rather than by their start (as serve does), so a test sees declarations and settings errors at once.
    exporter.load_trusted()
    return exporter



def install_distribution(site: Path, dist: str, version: str, modules: dict[str, str],
                         entry_points: dict[str, str]) -> dict[str, str]:
    """A real installed distribution under ``site`` (modules, dist-info, entry points).

    Returns the environment (``PYTHONPATH``) under which a child process
    finds it through the normal entry-point machinery.
    """
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[crusoe_metrics_exporter]\n{lines}")
    # Prepended, not replacing: a PYTHONPATH the tests run under (an older tree's code) stays in effect.
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))}


#: Source of a plugin module whose start() blocks until the file named by the
#: environment variable ``<NAME>_GATE`` exists (at most 60 s), then raises if
#: ``<NAME>_FAIL`` is set; it exports ``<name>_value 1``. Its collect appends a
#: line to the file ``<NAME>_CALLS`` names (if set) and then waits for the
#: file ``<NAME>_COLLECT_GATE`` names (if set; at most 30 s).
GATED_PLUGIN = '''
import os
import time
from pathlib import Path

from crusoe_metrics_exporter.sdk import MetricSpec, PluginSpec, Sample, Support, hookimpl

NAME = {name!r}


class Collector:
    def __init__(self, ctx):
        self.gate = Path(os.environ[NAME.upper() + "_GATE"])

    def start(self):
        deadline = time.monotonic() + 60
        while not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if os.environ.get(NAME.upper() + "_FAIL"):
            raise RuntimeError("the gate opened onto a failure")

    def collect(self):
        calls = os.environ.get(NAME.upper() + "_CALLS")
        if calls:
            with open(calls, "a") as fh:
                fh.write("collect\\n")
        gate = os.environ.get(NAME.upper() + "_COLLECT_GATE")
        deadline = time.monotonic() + 30
        while gate and not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return [Sample(NAME + "_value", (), 1.0)]

    def stop(self):
        pass


@hookimpl
def crusoe_metrics_exporter_plugin():
    return PluginSpec(name=NAME, description="starts when its gate opens",
                      metrics=(MetricSpec(NAME + "_value", "gauge", "One, once started."),),
                      factory=Collector, check_support=lambda ctx: Support.ok())
'''


#: Source of a plugin that misbehaves everywhere after starting: its collect
#: never returns, its stop never returns, and start leaves a non-daemon
#: thread blocked for good (as a statfs on a dead NFS server would).
HUNG_PLUGIN = '''
import threading

from crusoe_metrics_exporter.sdk import MetricSpec, PluginSpec, Support, hookimpl

NAME = {name!r}
FOREVER = threading.Event()


class Collector:
    def __init__(self, ctx):
        pass

    def start(self):
        threading.Thread(target=FOREVER.wait, name=NAME + "-stuck", daemon=False).start()

    def collect(self):
        FOREVER.wait()
        return []

    def stop(self):
        FOREVER.wait()


@hookimpl
def crusoe_metrics_exporter_plugin():
    return PluginSpec(name=NAME, description="hangs in collect and stop",
                      metrics=(MetricSpec(NAME + "_value", "gauge", "Never produced."),),
                      factory=Collector, check_support=lambda ctx: Support.ok())
'''
