"""`plugin new` end to end, as a third-party author would go (issue 14's "Done when").

Scaffold a package, extend it with a histogram and an option, run its own
tests (the testing kit comes with the exporter as a pytest plugin), install
it with pip, and find it in ``plugins``, ``collect`` and ``/metrics``. Then
switch on the option that makes it produce a wrong sample: the log names the
metric, its labels and the rule it broke, and the plugin shows *degraded*
in ``plugins``, on ``/`` and in ``plugin_state``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.server import CLI, running_exporter

NAME = "sdkdemo"
DIST = "crusoe-exporter-sdkdemo"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

#: The extension an author makes: a histogram of how many bytes each read of
#: /proc/stat returned, labelled by source, and an option that, when on,
#: reports it without its overflow bucket (the classic bug).
EXTENSION = [
    ('READ_BUCKETS = (0.00001, 0.0001, 0.001, 0.01, 0.1)\n',
     'READ_BUCKETS = (0.00001, 0.0001, 0.001, 0.01, 0.1)\nSIZE_BUCKETS = (1024.0, 4096.0, 16384.0, 65536.0)\n'),
    ('    MetricSpec.errors(ERRORS,',
     '    MetricSpec("sdkdemo_read_size_bytes", "histogram", "Bytes each read of /proc/stat returned.", ("source",),\n'
     '               buckets=SIZE_BUCKETS),\n'
     '    MetricSpec.errors(ERRORS,'),
    ('    max_bytes: int = option("int", 1 << 20, "Bytes of /proc/stat read at most.", minimum=4096)\n',
     '    max_bytes: int = option("int", 1 << 20, "Bytes of /proc/stat read at most.", minimum=4096)\n'
     '    drop_overflow_bucket: bool = option("bool", False, "Report read sizes without the overflow bucket "\n'
     '                                        "(a deliberate bug).", env="SDKDEMO_DROP_OVERFLOW_BUCKET")\n'),
    ('        self._sum = 0.0\n',
     '        self._sum = 0.0\n        self._sizes = [0] * (len(SIZE_BUCKETS) + 1)\n        self._size_sum = 0.0\n'),
    ('            histogram = HistogramValue(tuple(self._counts), self._sum)\n',
     '            histogram = HistogramValue(tuple(self._counts), self._sum)\n'
     '            self._sizes[bucket_index(SIZE_BUCKETS, len(content.data))] += 1\n'
     '            self._size_sum += len(content.data)\n'
     '            sizes = tuple(self._sizes[:-1] if self.ctx.options.drop_overflow_bucket else self._sizes)\n'
     '            size_histogram = HistogramValue(sizes, self._size_sum)\n'),
    ('        samples = [Sample("sdkdemo_read_duration_seconds", (), histogram)]\n',
     '        samples = [Sample("sdkdemo_read_duration_seconds", (), histogram),\n'
     '                   Sample("sdkdemo_read_size_bytes", ("stat",), size_histogram)]\n'),
]

EXTENSION_TESTS = '''

def test_read_sizes(proc_tree: ProcTree) -> None:
    with PluginHarness(plugin, host_proc=proc_tree({"stat": STAT})) as harness:
        sizes = harness.value("sdkdemo_read_size_bytes", source="stat")
        assert isinstance(sizes, HistogramValue) and sizes.counts == (1, 0, 0, 0, 0)
        assert sizes.sum == len(STAT)


def test_the_deliberate_bug_is_caught_by_the_kit(proc_tree: ProcTree) -> None:
    import pytest
    from crusoe_metrics_exporter.testing import InvalidSamples

    with PluginHarness(plugin, host_proc=proc_tree({"stat": STAT}), options={"drop_overflow_bucket": True}) as h:
        with pytest.raises(InvalidSamples, match=r"sdkdemo_read_size_bytes\\{source='stat'\\}.*histogram_buckets"):
            h.collect()
'''


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("plugin-new")
    made = run(CLI, "plugin", "new", NAME, "--dir", str(parent))
    assert made.returncode == 0, made.stderr
    root = parent / DIST
    init = root / "src" / f"crusoe_exporter_{NAME}" / "__init__.py"
    source = init.read_text()
    for anchor, replacement in EXTENSION:
        assert source.count(anchor) == 1, anchor
        source = source.replace(anchor, replacement)
    init.write_text(source)
    tests = root / "tests" / "test_plugin.py"
    tests.write_text(tests.read_text() + EXTENSION_TESTS)
    return root


@pytest.fixture(scope="module")
def installed(package: Path) -> Iterator[Path]:
    result = run(*PIP, "install", "--no-deps", "--no-build-isolation", "-e", str(package))
    assert result.returncode == 0, result.stderr
    try:
        yield package
    finally:
        run(*PIP, "uninstall", "-y", DIST)


def test_the_extended_package_passes_its_own_tests_with_the_kit(package: Path) -> None:
    result = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout, result.stdout
    lint = run(sys.executable, "-m", "ruff", "check", ".", cwd=package)
    assert lint.returncode == 0, lint.stdout


def test_after_pip_install_it_is_listed_collected_and_served(installed: Path) -> None:
    listed = {p["name"]: p for p in json.loads(run(CLI, "plugins", "--json").stdout)}
    assert listed[NAME]["distribution"] == DIST and listed[NAME]["version"] == "0.1.0"
    assert listed[NAME]["state"] == "active", listed[NAME]

    collected = run(CLI, "collect", "--plugin", NAME)
    assert collected.returncode == 0, collected.stderr
    assert re.search(r"^crusoe_vm_sdkdemo_context_switches_total \d", collected.stdout, re.M)
    assert 'crusoe_vm_sdkdemo_read_size_bytes_bucket{le="+Inf",source="stat"} 1.0' in collected.stdout

    with running_exporter() as exporter:
        status, _, body = exporter.get("/metrics")
    assert status == 200
    assert "# TYPE crusoe_vm_sdkdemo_read_size_bytes histogram" in body
    assert 'crusoe_vm_exporter_plugin_state{plugin="sdkdemo",state="active"} 1.0' in body


def test_a_wrong_sample_is_named_in_the_log_and_degrades_the_plugin(installed: Path) -> None:
    bug = ["--set", f"plugins.{NAME}.drop_overflow_bucket=true"]
    listed = run(CLI, "plugins", "--collect", "--json", "--enable", NAME, *bug)
    assert listed.returncode == 0, listed.stderr
    [rec] = [p for p in json.loads(listed.stdout) if p["name"] == NAME]
    assert rec["state"] == "degraded" and "(histogram_buckets)" in rec["reason"], rec
    [line] = [line for line in listed.stderr.splitlines() if "dropped invalid sample" in line]
    # The metric, its labels, the value and the rule, in one warning line.
    assert "WARNING" in line and re.search(r"plugin sdkdemo: dropped invalid sample sdkdemo_read_size_bytes"
                                           r"\{source='stat'\} = HistogramValue\(counts=\(\d+, \d+, \d+, \d+\), ",
                                           line), line
    assert "a HistogramValue needs one count per declared bucket bound plus the overflow count " \
        "(histogram_buckets)" in line

    with running_exporter(args=("--enable", NAME, *bug)) as exporter:
        exporter.get("/metrics")
        _, _, body = exporter.get("/metrics")
        _, _, page = exporter.get("/")
    assert 'crusoe_vm_exporter_plugin_state{plugin="sdkdemo",state="degraded"} 1.0' in body
    assert re.search(r'crusoe_vm_exporter_plugin_invalid_samples_total\{plugin="sdkdemo",reason="histogram_buckets"\} '
                     r'[1-9]', body)
    assert "crusoe_vm_sdkdemo_read_size_bytes" not in body and "crusoe_vm_sdkdemo_procs_blocked" in body
    assert "degraded" in page and "histogram_buckets" in page
