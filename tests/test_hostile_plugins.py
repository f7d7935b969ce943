"""A hostile plugin package, installed for real, against a real exporter in a 256 MiB memory cgroup.

The trial: ``sys.exit()`` at import exited the exporter even with the plugin
disabled; a hang at import or in ``start()`` meant it never listened;
``sys.exit`` in ``start()`` exited it, ``os._exit`` killed it; a collect that
held the GIL for 12 s blocked ``/health`` and every scrape while
``plugin_up`` stayed 1; a million series OOM-killed it on the first scrape,
an 8 MiB-per-scrape leak at scrape 27, and 20 threads per scrape reached 341
threads in 15 scrapes. Here every one of them is installed and enabled
next to the built-in procfs plugins, and again installed but disabled.

The million-series plugin runs in an exporter of its own: it is allowed
max_series_per_plugin (160k) series like the biggest built-in host, which
costs the exporter ~130 MiB, and next to a worker leaking up to its 64 MiB
allowance that is more than 256 MiB can hold for any design; each alone
fits with room to spare.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.cgroup_exporter import CgroupExporter, exporter_in_cgroup
from helpers.hostile_plugins import BEHAVIOURS, install_hostile, plugin_name
from helpers.procfs_tree import PROCFS_PLUGINS, build_tree, series_by_plugin
from helpers.server import CLI

HOSTILE = [plugin_name(b) for b in BEHAVIOURS]
#: Enabled together in one exporter: all but the million-series plugin.
TOGETHER = [plugin_name(b) for b in BEHAVIOURS if b != "million"]
_LINE = re.compile(r"^(crusoe_vm_[a-z0-9_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)

pytestmark = [pytest.mark.cgroup, pytest.mark.slow]


@contextmanager
def exporter(tmp_path: Path, enabled: list[str]) -> Iterator[CgroupExporter]:
    site = tmp_path / "site"
    site.mkdir()
    marks = tmp_path / "imported"
    marks.mkdir()
    tree = build_tree(tmp_path / "proc")
    env = {**install_hostile(site), "HOSTILE_DIR": str(marks), "HOST_PROC_PATH": str(tree),
           # Two malloc arenas, as a memory-limited deployment runs it: with one per collect thread, glibc
           # holds on to what each scrape of 160k series freed (180-200 MiB and rising instead of ~130).
           "MALLOC_ARENA_MAX": "2"}
    args = ["--enable", ",".join([*PROCFS_PLUGINS, *enabled]), "--set", "exporter.collect_timeout=2s",
            "--set", "exporter.start_timeout=4s"]
    with exporter_in_cgroup(args, env, wrapper=["prlimit", "--nofile=1024:1024"]) as running:
        yield running
    imported = {p.name.removeprefix("imported-") for p in marks.iterdir()}
    assert imported <= set(enabled), f"disabled plugins were imported: {sorted(imported - set(enabled))}"


def _states(text: str) -> dict[str, str]:
    out = {}
    for name, labels, value in _LINE.findall(text):
        if name == "crusoe_vm_exporter_plugin_state" and float(value) == 1.0:
            plugin = re.search(r'plugin="([^"]+)"', labels)
            state = re.search(r'state="([^"]+)"', labels)
            assert plugin and state
            out[plugin.group(1)] = state.group(1)
    return out


def _up(text: str, plugin: str) -> float:
    for name, labels, value in _LINE.findall(text):
        if name == "crusoe_vm_exporter_plugin_up" and f'plugin="{plugin}"' in labels:
            return float(value)
    raise AssertionError(f"no plugin_up for {plugin}")


def _health_during(running: CgroupExporter, seconds: float) -> list[float]:
    """/health latencies, one request every 50 ms for ``seconds``."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, _, took = running.get("/health", timeout=5)
        assert status == 200
        latencies.append(took)
        time.sleep(0.05)
    return latencies


def _clean_shutdown(running: CgroupExporter) -> None:
    """SIGTERM: exit 0 within 5 s, every worker (and the zygote) gone with the exporter."""
    started = time.monotonic()
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5.0
    deadline = time.monotonic() + 5
    while (running.cgroup.path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (running.cgroup.path / "cgroup.procs").read_text().strip(), "a worker outlived the exporter"
    assert running.cgroup.oom_kills() == 0


def _health_while_scraping(running: CgroupExporter) -> tuple[list[float], tuple[int, str, float]]:
    """/metrics once, while another client keeps asking /health (the GIL hog's 12 s collect runs meanwhile)."""
    box: dict[str, list[float]] = {}

    def watch() -> None:
        box["health"] = _health_during(running, 1.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    answer = running.get("/metrics")
    watcher.join()
    return box["health"], answer


def test_every_hostile_plugin_enabled_costs_only_itself(tmp_path: Path) -> None:
    with exporter(tmp_path, TOGETHER) as running:
        assert running.listened_after < 1.0, running.listened_after
        running.wait_ready(20)
        status, text, _ = running.get("/metrics")
        baseline = series_by_plugin(text, error_counters=True)
        assert all(baseline.values()), baseline

        scrapes: list[float] = []
        health: list[float] = []
        for _ in range(8):
            latencies, (status, text, took) = _health_while_scraping(running)
            health.extend(latencies)
            scrapes.append(took)
            assert status == 200
            assert series_by_plugin(text, error_counters=True) == baseline, "a procfs plugin lost series"
            # The trial: plugin_up stayed 1 while the hog held every scrape; now its collect misses the deadline.
            assert _up(text, plugin_name("gil_hog")) == 0.0
            running.alive()
            time.sleep(0.5)

        states = _states(text)
        for plugin in PROCFS_PLUGINS:
            assert states[plugin] == "active", (plugin, states)
        assert states[plugin_name("exit_import")] == "failed"
        assert states[plugin_name("hang_import")] == "failed"
        assert states[plugin_name("exit_start")] == "failed"
        assert states[plugin_name("hang_start")] == "failed"
        assert states[plugin_name("interrupt_check")] == "failed"
        log = running.log()
        assert "plugin hostile_exit_import failed to load: SystemExit: 3" in log
        assert "plugin hostile_exit_start failed to start: SystemExit: 4" in log
        assert "support check raised KeyboardInterrupt" in log
        assert "the worker exited with status 7 during collect" in log  # os._exit, restarted since
        assert "more than worker_max_threads=32" in log
        assert "more than worker_memory_mib=64" in log
        assert "Traceback" not in log

        threads = running.status("Threads")
        peak_rss = running.status("VmHWM") * 1024
        assert threads < 40, threads
        assert max(health) < 0.5, sorted(health)[-5:]
        assert max(scrapes) < 2.0 + 1.0, scrapes  # collect_timeout, plus rendering
        print(f"hostile enabled: listened after {running.listened_after:.2f}s, /health max {max(health):.3f}s "
              f"over {len(health)} requests, scrape max {max(scrapes):.2f}s, main RSS peak {peak_rss / 2**20:.0f} "
              f"MiB, cgroup peak {running.cgroup.peak_bytes() / 2**20:.0f} MiB, {threads} threads")

        _clean_shutdown(running)


def test_a_million_series_are_kept_to_the_limit_within_256_mib(tmp_path: Path) -> None:
    """The trial: a million series OOM-killed the exporter on the first scrape."""
    with exporter(tmp_path, [plugin_name("million")]) as running:
        running.wait_ready(20)
        scrapes = []
        for _ in range(10):
            status, text, took = running.get("/metrics")
            assert status == 200
            scrapes.append(took)
            running.alive()
        assert text.count(f"crusoe_vm_{plugin_name('million')}_series{{") == 160_000
        assert _states(text)[plugin_name("million")] == "degraded"
        dropped = re.search(r'crusoe_vm_exporter_plugin_invalid_samples_total\{plugin="hostile_million",'
                            r'reason="series_limit"\} (\S+)', text)
        assert dropped and float(dropped.group(1)) >= 840_000
        assert all(series_by_plugin(text, error_counters=True).values())
        peak_rss = running.status("VmHWM") * 1024
        print(f"1M series: 160k kept per scrape, scrape max {max(scrapes):.2f}s, main RSS peak "
              f"{peak_rss / 2**20:.0f} MiB, cgroup peak {running.cgroup.peak_bytes() / 2**20:.0f} MiB")
        _clean_shutdown(running)


def test_hostile_plugins_installed_but_disabled_are_never_imported(tmp_path: Path) -> None:
    with exporter(tmp_path, []) as running:
        assert running.listened_after < 1.0
        deadline = time.monotonic() + 10
        while running.get("/ready")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, text, _ = running.get("/metrics")
        assert status == 200
        assert all(series_by_plugin(text, error_counters=True).values())
        states = _states(text)
        assert {states[name] for name in HOSTILE} == {"disabled"}
        assert not list((tmp_path / "imported").iterdir())
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=10) == 0


def test_a_trusted_plugin_runs_in_process_and_its_exit_still_costs_only_itself(tmp_path: Path) -> None:
    """[exporter] in_process: no worker, but import, check and start still run inside an error boundary."""
    site = tmp_path / "site"
    site.mkdir()
    marks = tmp_path / "imported"
    marks.mkdir()
    trusted = [plugin_name(b) for b in ("exit_import", "exit_start", "interrupt_check", "hang_start")]
    env = {**os.environ, **install_hostile(site), "HOSTILE_DIR": str(marks), "HOST_PROC_PATH": str(build_tree(
        tmp_path / "proc")), "CRUSOE_EXPORTER_IN_PROCESS": ",".join(trusted)}
    out = subprocess.run([CLI, "collect", "--set", "exporter.start_timeout=3s",
                          "--enable", ",".join(["disk_stats", *trusted])], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "crusoe_vm_disk_reads_completed_total" in out.stdout
    states = _states(out.stdout)
    assert {states[name] for name in trusted} == {"failed"}, states
    assert "plugin hostile_exit_import failed to load: SystemExit: 3" in out.stderr
    assert "plugin hostile_exit_start failed to start: SystemExit: 4" in out.stderr
    assert "its start did not finish within start_timeout=3s" in out.stderr
    assert "worker" not in out.stderr
