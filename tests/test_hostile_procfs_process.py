"""A hostile HOST_PROC_PATH against a real exporter process in a 256 MiB memory cgroup (the shipped limit).

The trial that found these faults: diskstats or 1/mounts replaced by
/dev/zero OOM-killed the exporter in 0.5 s; a FIFO there wedged a plugin on
every scrape, and at start-up the exporter never listened; a 100 MB file
OOMed it on the first scrape. Here every file the procfs plugins read is
made hostile at once before start, and then one at a time while it runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.cgroup_exporter import CgroupExporter, exporter_in_cgroup
from helpers.procfs_tree import FILES, HOSTILE_KINDS, PROCFS_PLUGINS, build_tree, make_hostile, remove, series_by_plugin

#: A scrape or start-up that takes longer than this is hung on a file (collect_timeout is 1 s here).
BOUND = 5.0

pytestmark = [pytest.mark.cgroup, pytest.mark.slow]


@contextmanager
def exporter_on(tree: Path) -> Iterator[CgroupExporter]:
    args = ["--enable", ",".join(PROCFS_PLUGINS), "--set", "exporter.collect_timeout=1s"]
    with exporter_in_cgroup(args, {"HOST_PROC_PATH": str(tree)}) as running:
        yield running
        # Shutdown is clean: SIGTERM, exit 0, nothing hung.
        running.proc.terminate()
        assert running.proc.wait(timeout=10) == 0, running.log()[-3000:]
        assert "Traceback" not in running.log()
        assert running.cgroup.oom_kills() == 0


def _scrape(process: CgroupExporter) -> tuple[int, str, float]:
    return process.get("/metrics", timeout=BOUND * 2)


_LINE = re.compile(r"^(crusoe_vm_[a-z0-9_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)


def _trouble_shown(text: str, plugin: str) -> bool:
    for name, labels, value in _LINE.findall(text):
        if f'plugin="{plugin}"' not in labels:
            continue
        failed = re.search(r'state="(unsupported|failed)"', labels)
        if name == "crusoe_vm_exporter_plugin_state" and failed and float(value) == 1.0:
            return True
        if name == "crusoe_vm_exporter_plugin_errors_total" and float(value) > 0:
            return True
    return any(name.startswith(f"crusoe_vm_{plugin}") and name.endswith("collection_errors_total")
               and float(value) > 0 for name, _, value in _LINE.findall(text))


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_every_file_hostile_at_start_up(tmp_path: Path, kind: str) -> None:
    tree = build_tree(tmp_path / "proc")
    for file in FILES:
        make_hostile(tree / file, kind)
    with exporter_on(tree) as process:
        process.wait_ready()
        for _ in range(3):
            status, text, took = _scrape(process)
            assert status == 200 and took < BOUND, (status, took)
            process.alive()
        for plugin in PROCFS_PLUGINS:
            assert _trouble_shown(text, plugin), f"{plugin} does not show that its file is {kind}"
        print(f"{kind} at start-up: listened after {process.listened_after:.2f}s, scrape {took:.3f}s, "
              f"peak RSS {process.peak_rss() / 2**20:.1f} MiB")


def test_each_file_hostile_while_running_and_good_again(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "proc")
    good = {file: (tree / file).read_bytes() for file in FILES}
    with exporter_on(tree) as process:
        process.wait_ready()
        status, text, _ = _scrape(process)
        baseline = series_by_plugin(text)
        assert all(baseline.values()), baseline
        slowest = 0.0
        for file, readers in FILES.items():
            for kind in HOSTILE_KINDS:
                make_hostile(tree / file, kind)
                status, text, took = _scrape(process)
                slowest = max(slowest, took)
                assert status == 200 and took < BOUND, (file, kind, status, took)
                for plugin in PROCFS_PLUGINS:
                    if plugin in readers:
                        assert _trouble_shown(text, plugin), (file, kind, plugin)
                    else:
                        assert series_by_plugin(text)[plugin] == baseline[plugin], (file, kind, plugin)
                remove(tree / file)
                (tree / file).write_bytes(good[file])
                process.alive()
        # Everything good again: every series is back.
        time.sleep(1.0)
        status, text, _ = _scrape(process)
        assert series_by_plugin(text) == baseline
        print(f"while running: {len(FILES) * len(HOSTILE_KINDS)} faults, slowest scrape {slowest:.3f}s, "
              f"peak RSS {process.peak_rss() / 2**20:.1f} MiB")
