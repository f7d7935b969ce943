"""``crusoe-metrics-exporter plugin new NAME``: a complete third-party plugin package to start from.

The package measures something every Linux host has (context switches and
blocked tasks from /proc/stat) with one counter, one gauge, one histogram,
an option and the collection-error counter, parses in a pure function with
a real fixture, and tests itself with the exporter's testing kit. It passes
its own tests as written and shows up in ``plugins`` after ``pip install -e``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter import __version__

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: The exporter major version the package depends on: the SDK only grows within one.
_MAJOR = int(__version__.split(".")[0])


class ScaffoldError(ValueError):
    """The name or the target directory cannot be used; ``str()`` is one line."""


@dataclass(frozen=True)
class Names:
    plugin: str      # entry-point name, metric prefix, [plugins.<plugin>] table
    package: str     # the Python package (import name)
    distribution: str

    @classmethod
    def of(cls, plugin: str) -> Names:
        if not _NAME.match(plugin) or plugin.endswith("_"):
            raise ScaffoldError(f"invalid plugin name {plugin!r}: expected lowercase letters, digits and _, "
                                "starting with a letter (it becomes the entry-point name and the metric prefix)")
        return cls(plugin, f"crusoe_exporter_{plugin}", f"crusoe-exporter-{plugin.replace('_', '-')}")


def files(names: Names) -> dict[str, str]:
    """Relative path -> content of every file of the package."""
    values = {
        "name": names.plugin,
        "package": names.package,
        "dist": names.distribution,
        "title": names.plugin.replace("_", " "),
        "requires": f"crusoe-metrics-exporter>={_MAJOR}.{0 if _MAJOR else 1},<{_MAJOR + 1}",
    }
    return {
        path.replace("PACKAGE", names.package): string.Template(text).substitute(values)
        for path, text in _TEMPLATES.items()
    }


def write(names: Names, parent: Path) -> Path:
    """Write the package into ``parent/<distribution>``; refuses an existing directory."""
    root = parent / names.distribution
    if root.exists():
        raise ScaffoldError(f"{root} exists; choose another name or directory")
    for rel, text in files(names).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "crusoe-metrics-exporter plugin: $title."
readme = "README.md"
requires-python = ">=3.11"
# The SDK only grows within a major version of the exporter.
dependencies = ["$requires"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This table makes it a plugin: the exporter finds every entry point in the
# "crusoe_metrics_exporter" group. The name is the plugin's name.
[project.entry-points.crusoe_metrics_exporter]
$name = "$package"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
"*" = ["py.typed"]

[tool.pytest.ini_options]
# The tests run before the package is installed, too.
pythonpath = ["src"]
testpaths = ["tests"]

[tool.ruff]
line-length = 120

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP"]

[tool.ruff.lint.isort]
known-first-party = ["$package"]
'''

_INIT = '''\
"""$name: context switches and blocked tasks from /proc/stat.

Replace what it measures with your own and keep the structure: the
declarations here, pure parsing in parser.py, tests with the exporter's
testing kit in tests/. Import only from crusoe_metrics_exporter.sdk.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from crusoe_metrics_exporter.sdk import (
    HistogramValue,
    MetricSpec,
    PluginContext,
    PluginSpec,
    Sample,
    Support,
    bucket_index,
    hookimpl,
    option,
    read_limited,
)

from $package.parser import parse_stat

ERRORS = "${name}_collection_errors_total"
#: Upper bounds of the read-duration histogram, in seconds (+Inf is implicit).
READ_BUCKETS = (0.00001, 0.0001, 0.001, 0.01, 0.1)

METRICS = (
    MetricSpec("${name}_context_switches_total", "counter", "Context switches since boot (/proc/stat ctxt)."),
    MetricSpec("${name}_procs_blocked", "gauge", "Tasks blocked waiting for I/O now (/proc/stat procs_blocked)."),
    MetricSpec("${name}_read_duration_seconds", "histogram", "Time to read and parse /proc/stat.",
               buckets=READ_BUCKETS),
    MetricSpec.errors(ERRORS, "Unreadable, oversized or malformed /proc/stat reads."),
)


@dataclass(frozen=True)
class Options:
    """The [plugins.$name] table; values arrive parsed and checked as ctx.options."""

    max_bytes: int = option("int", 1 << 20, "Bytes of /proc/stat read at most.", minimum=4096)


class Collector:
    """start() once, collect() per scrape on a worker thread, stop() at the end."""

    def __init__(self, ctx: PluginContext[Options]) -> None:
        self.ctx = ctx
        self.path = ctx.host_proc / "stat"
        self._lock = threading.Lock()
        self._counts = [0] * (len(READ_BUCKETS) + 1)
        self._sum = 0.0

    def start(self) -> None:
        self.ctx.details["path"] = str(self.path)

    def collect(self) -> list[Sample]:
        began = time.perf_counter()
        try:
            content = read_limited(self.path, self.ctx.options.max_bytes)
        except OSError as exc:
            self.ctx.errors.inc(ERRORS)
            self.ctx.log.debug("cannot read %s: %s", self.path, exc)
            return []
        stat = parse_stat(content.data.decode("ascii", "replace"))
        if content.truncated or stat.missing:
            self.ctx.errors.inc(ERRORS)
        took = time.perf_counter() - began
        with self._lock:
            self._counts[bucket_index(READ_BUCKETS, took)] += 1
            self._sum += took
            histogram = HistogramValue(tuple(self._counts), self._sum)
        samples = [Sample("${name}_read_duration_seconds", (), histogram)]
        if stat.context_switches is not None:
            samples.append(Sample("${name}_context_switches_total", (), float(stat.context_switches)))
        if stat.procs_blocked is not None:
            samples.append(Sample("${name}_procs_blocked", (), float(stat.procs_blocked)))
        return samples

    def stop(self) -> None:
        pass


def check_support(ctx: PluginContext[Options]) -> Support:
    path = ctx.host_proc / "stat"
    if not path.is_file():
        return Support.unsupported(f"{path} does not exist", fix="set HOST_PROC_PATH to the host's /proc")
    return Support.ok(path=str(path))


@hookimpl
def crusoe_metrics_exporter_plugin() -> PluginSpec[Options]:
    return PluginSpec(
        name="$name",
        description="Context switches and blocked tasks from /proc/stat.",
        metrics=METRICS,
        factory=Collector,
        check_support=check_support,
        options=Options,
    )
'''

_PARSER = '''\
"""Pure parsing of /proc/stat: text in, values out, no I/O (tests feed it real and damaged samples)."""

from __future__ import annotations

from typing import NamedTuple


class Stat(NamedTuple):
    context_switches: int | None
    procs_blocked: int | None
    #: Of the two lines, how many were absent or not a number.
    missing: int


def parse_stat(text: str) -> Stat:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key in ("ctxt", "procs_blocked"):
            try:
                values[key] = int(rest.strip())
            except ValueError:
                continue
    return Stat(values.get("ctxt"), values.get("procs_blocked"), 2 - len(values))
'''

_FIXTURE = '''\
cpu  5291 0 4419 1063958 1195 0 313 0 0 0
cpu0 2649 0 2214 531951 597 0 156 0 0 0
cpu1 2642 0 2205 532007 598 0 157 0 0 0
intr 868442 9 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0
ctxt 1536071
btime 1717000000
processes 9637
procs_running 1
procs_blocked 2
softirq 478212 0 94081 12 33270 20340 0 1064 187690 0 141755
'''

_TESTS = '''\
"""$name's tests, with the exporter's testing kit (a pytest plugin that comes with the exporter)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from crusoe_metrics_exporter.sdk import HistogramValue
from crusoe_metrics_exporter.testing import PluginHarness, check_declaration

import $package as plugin
from $package.parser import Stat, parse_stat

STAT = (Path(__file__).parent / "data" / "stat.txt").read_text()


def test_the_declaration_is_what_the_exporter_accepts() -> None:
    check_declaration(plugin)


def test_parser() -> None:
    assert parse_stat(STAT) == Stat(1536071, 2, 0)
    assert parse_stat("ctxt x\\n") == Stat(None, None, 2)


ProcTree = Callable[[Mapping[str, str]], Path]


def test_collect_from_a_fake_proc(proc_tree: ProcTree) -> None:
    with PluginHarness(plugin, host_proc=proc_tree({"stat": STAT})) as harness:
        samples = {s.metric: s.value for s in harness.collect()}
        assert samples["${name}_context_switches_total"] == 1536071.0
        assert samples["${name}_procs_blocked"] == 2.0
        histogram = samples["${name}_read_duration_seconds"]
        assert isinstance(histogram, HistogramValue) and sum(histogram.counts) == 1
        assert harness.error_total() == 0
        assert "crusoe_vm_${name}_procs_blocked 2.0" in harness.exposition()


def test_a_damaged_file_is_counted_and_the_rest_reported(proc_tree: ProcTree) -> None:
    with PluginHarness(plugin, host_proc=proc_tree({"stat": "ctxt 7\\n"})) as harness:
        assert harness.value("${name}_context_switches_total") == 7.0
        assert harness.value("${name}_procs_blocked") is None
        assert harness.error_total() == 2  # one per collect: procs_blocked is missing


def test_this_host() -> None:
    with PluginHarness(plugin) as harness:
        assert harness.value("${name}_context_switches_total")
'''

_README = '''\
# $dist

A [crusoe-metrics-exporter](https://pypi.org/project/crusoe-metrics-exporter/)
plugin: $title. Made with `crusoe-metrics-exporter plugin new $name`.

```sh
pip install -e .                      # next to the exporter
crusoe-metrics-exporter plugins       # $name: active
crusoe-metrics-exporter collect --plugin $name
python -m pytest                      # the tests use the exporter's testing kit
```

Settings go in the exporter's configuration as `[plugins.$name]` (or
`--set plugins.$name.max_bytes=...`); `crusoe-metrics-exporter config show`
lists them. Metrics are exposed as `crusoe_vm_${name}_*`.

Layout: `src/$package/__init__.py` declares the metrics, options, support
check and collector; `parser.py` parses what the kernel writes as pure
functions; `tests/` tests both with the exporter's testing kit and a real
`/proc/stat` sample in `tests/data/`. The exporter's plugin guide
(`docs/plugin-guide.md` in its repository) explains the rules.
'''

_TEMPLATES: dict[str, str] = {
    "pyproject.toml": _PYPROJECT,
    "README.md": _README,
    "src/PACKAGE/__init__.py": _INIT,
    "src/PACKAGE/parser.py": _PARSER,
    "src/PACKAGE/py.typed": "",
    "tests/test_plugin.py": _TESTS,
    "tests/data/stat.txt": _FIXTURE,
}
