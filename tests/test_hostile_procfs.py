"""A hostile HOST_PROC_PATH: every file the exporter reads replaced by /dev/zero, a FIFO, a directory,
a symlink loop or a 100 MB file, at start-up and while running.

The exporter here is the real one (discovery, settings, plugins, runner,
renderer) in this process; tests/test_hostile_procfs_process.py runs the
same faults against a real exporter process in a 256 MiB memory cgroup.
What must hold in every case: start-up and the scrape return in bounded
time, the plugins that do not read the file keep every series, the plugin
that does shows the problem (unsupported, or its error counter moves), and
once the file is good again its series come back.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.procfs_tree import FILES, HOSTILE_KINDS, PROCFS_PLUGINS, build_tree, make_hostile, remove, series_by_plugin

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.devices import device_names
from crusoe_metrics_exporter.exposition import render
from crusoe_metrics_exporter.settings import Overrides
from crusoe_metrics_exporter.targets.directory import TargetDirectory
from crusoe_metrics_exporter.targets.service import TargetOptions
from crusoe_metrics_exporter.testing import options_for

#: Each plugin's collect may take this long before the scrape goes on without it.
COLLECT_TIMEOUT = 1.0
#: Start-up or a scrape that takes longer than this hung on the file.
BOUND = 5.0


def _exporter(tree: Path) -> Exporter:
    env = {"HOST_PROC_PATH": str(tree), "CRUSOE_EXPORTER_ENABLE": ",".join(PROCFS_PLUGINS)}
    return Exporter.from_environment(None, Overrides({"exporter.collect_timeout": f"{COLLECT_TIMEOUT}s"}), env)


def _errors(text: str, plugin: str) -> float:
    total = 0.0
    for line in text.splitlines():
        meta = line.startswith("crusoe_vm_exporter_plugin_errors_total{") and f'plugin="{plugin}"' in line
        if meta or line.startswith(f"crusoe_vm_{plugin}_collection_errors_total "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape(exporter: Exporter) -> str:
    started = time.monotonic()
    text = render(exporter.collect()).decode()
    assert time.monotonic() - started < BOUND, "the scrape hung on the file"
    return text


def _start(exporter: Exporter) -> None:
    started = time.monotonic()
    assert exporter.begin_start().wait(BOUND), f"start-up hung: {exporter.startup and exporter.startup.pending()}"
    assert time.monotonic() - started < BOUND


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Every procfs plugin's series on the good tree (each plugin has some, and none has errors)."""
    tree = build_tree(tmp_path_factory.mktemp("good") / "proc")
    exporter = _exporter(tree)
    _start(exporter)
    try:
        text = _scrape(exporter)
        series = series_by_plugin(text)
        for plugin in PROCFS_PLUGINS:
            assert series[plugin], f"{plugin} exports nothing on the good tree"
            assert _errors(text, plugin) == 0, (plugin, text)
        return series
    finally:
        exporter.stop()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "proc")


def _check_isolated(exporter: Exporter, text: str, file: str, baseline: dict[str, set[str]]) -> None:
    series = series_by_plugin(text)
    readers = FILES[file]
    for plugin in PROCFS_PLUGINS:
        if plugin not in readers:
            assert series[plugin] == baseline[plugin], f"{plugin} lost series when {file} went bad"
    states = {r.name: r.state for r in exporter.records}
    for plugin in readers:
        shown = states[plugin] in ("unsupported", "failed") or _errors(text, plugin) > 0
        assert shown, f"{plugin} hides that {file} is bad: state {states[plugin]}"
        assert not series[plugin] or series[plugin] < baseline[plugin] or _errors(text, plugin) > 0


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
@pytest.mark.parametrize("file", sorted(FILES))
def test_at_start_up(tree: Path, baseline: dict[str, set[str]], file: str, kind: str) -> None:
    make_hostile(tree / file, kind)
    exporter = _exporter(tree)
    _start(exporter)
    try:
        _check_isolated(exporter, _scrape(exporter), file, baseline)
    finally:
        exporter.stop()


@pytest.mark.parametrize("file", sorted(FILES))
def test_while_running_and_back(tree: Path, baseline: dict[str, set[str]], file: str) -> None:
    exporter = _exporter(tree)
    _start(exporter)
    good = (tree / file).read_bytes()
    try:
        assert series_by_plugin(_scrape(exporter)) == baseline
        for kind in HOSTILE_KINDS:
            make_hostile(tree / file, kind)
            _check_isolated(exporter, _scrape(exporter), file, baseline)
            remove(tree / file)
            (tree / file).write_bytes(good)
            # Good again: every series is back (a collect that timed out may need one more scrape to finish).
            recovered = series_by_plugin(_scrape(exporter))
            if recovered != baseline:
                time.sleep(COLLECT_TIMEOUT)
                recovered = series_by_plugin(_scrape(exporter))
            assert recovered == baseline, f"series missing after {file} was {kind} and then good again"
    finally:
        exporter.stop()


def test_the_list_is_every_file_the_exporter_reads(tree: Path) -> None:
    """FILES names exactly what a start-up and a scrape of the procfs plugins open under HOST_PROC_PATH."""
    opened: set[str] = set()
    root = str(tree)
    recording = threading.Event()

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and recording.is_set() and isinstance(args[0], str) and args[0].startswith(root + "/"):
            opened.add(args[0].removeprefix(root + "/"))

    sys.addaudithook(audit)  # hooks cannot be removed; this one records only while the event is set
    exporter = _exporter(tree)
    recording.set()
    try:
        _start(exporter)
        _scrape(exporter)
    finally:
        recording.clear()
        exporter.stop()
    assert opened == set(FILES)


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_device_names_of_disk_latency(tree: Path, kind: str) -> None:
    """disk_latency's device table (read at start and on every refresh): empty, never a hang."""
    assert "vda" in device_names(tree).values()
    make_hostile(tree / "diskstats", kind)
    started = time.monotonic()
    assert device_names(tree) == {}
    assert time.monotonic() - started < BOUND


def _directory(tree: Path) -> TargetDirectory:
    options = options_for(TargetOptions, environ={"NFS_MOUNT_REFRESH_INTERVAL": "1h"})
    return TargetDirectory(options, tree, resolver=lambda name: ((), "no DNS in this test"))  # type: ignore[arg-type, return-value]


@pytest.fixture
def nfs_tree(tree: Path) -> Iterator[Path]:
    with (tree / "1" / "mounts").open("a") as f:
        f.write("192.0.2.7:/volumes/vol-a /mnt/a nfs rw,vers=3,addr=192.0.2.7 0 0\n")
    yield tree


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_nfs_target_discovery(nfs_tree: Path, kind: str) -> None:
    """The shared target directory (NFS servers from 1/mounts): at start no mounts known, while running the
    last good ones are kept; either way it returns."""
    good = (nfs_tree / "1" / "mounts").read_bytes()
    make_hostile(nfs_tree / "1" / "mounts", kind)
    directory = _directory(nfs_tree)
    started = time.monotonic()
    try:
        assert directory.nfs_mounts() == ()
        assert time.monotonic() - started < BOUND
    finally:
        directory.stop()

    remove(nfs_tree / "1" / "mounts")
    (nfs_tree / "1" / "mounts").write_bytes(good)
    directory = _directory(nfs_tree)
    try:
        assert [m.server for m in directory.nfs_mounts()] == ["192.0.2.7"]
        make_hostile(nfs_tree / "1" / "mounts", kind)
        started = time.monotonic()
        directory.refresh_now()
        assert time.monotonic() - started < BOUND
        assert [m.server for m in directory.nfs_mounts()] == ["192.0.2.7"]
    finally:
        directory.stop()
