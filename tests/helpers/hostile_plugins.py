"""A real third-party distribution of plugins that each do one hostile thing, for isolation tests.

Every module records that it was imported (a file ``imported-<name>`` in the
directory ``HOSTILE_DIR`` names), so a test can tell whether a disabled
plugin was imported at all. What each does, where:

* ``exit_import`` - ``sys.exit(3)`` at import
* ``hang_import`` - blocks at import (60 s)
* ``exit_start`` - ``sys.exit(4)`` in ``start()``
* ``hang_start`` - blocks in ``start()`` (60 s)
* ``interrupt_check`` - raises KeyboardInterrupt in its support check
* ``os_exit`` - ``os._exit(7)`` in its second collect
* ``gil_hog`` - holds the GIL for 12 s in each collect, without using a CPU
* ``leak`` - keeps 8 MiB more on every collect
* ``threads`` - starts 20 threads that never end on every collect
* ``million`` - one million series per collect

Each exports ``hostile_<name>_value`` when it gets that far.
"""

from __future__ import annotations

from pathlib import Path

from helpers.fake_plugins import install_distribution

BEHAVIOURS = ("exit_import", "hang_import", "exit_start", "hang_start", "interrupt_check", "os_exit", "gil_hog",
              "leak", "threads", "million")

_TEMPLATE = '''
import ctypes
import os
import sys
import threading
import time
from pathlib import Path

from crusoe_metrics_exporter.sdk import MetricSpec, PluginSpec, Sample, Support, hookimpl

NAME = {name!r}
BEHAVIOUR = {behaviour!r}
Path(os.environ["HOSTILE_DIR"], "imported-" + NAME).touch()

if BEHAVIOUR == "exit_import":
    sys.exit(3)
if BEHAVIOUR == "hang_import":
    time.sleep(60)

KEPT = []


class Collector:
    def __init__(self, ctx):
        self.calls = 0

    def start(self):
        if BEHAVIOUR == "exit_start":
            sys.exit(4)
        if BEHAVIOUR == "hang_start":
            time.sleep(60)

    def collect(self):
        self.calls += 1
        if BEHAVIOUR == "os_exit" and self.calls >= 2:
            os._exit(7)
        if BEHAVIOUR == "gil_hog":
            # Sleeps in C without releasing the GIL: every other thread of the process waits.
            ctypes.PyDLL(None).usleep(12_000_000)
        if BEHAVIOUR == "leak":
            block = bytearray(8 * 1024 * 1024)
            block[::4096] = b"x" * len(block[::4096])  # touched, so it is resident
            KEPT.append(block)
        if BEHAVIOUR == "threads":
            for _ in range(20):
                threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        if BEHAVIOUR == "million":
            return (Sample(NAME + "_series", (str(i),), 1.0) for i in range(1_000_000))
        return [Sample(NAME + "_value", (), 1.0)]

    def stop(self):
        pass


def check(ctx):
    if BEHAVIOUR == "interrupt_check":
        raise KeyboardInterrupt
    return Support.ok()


@hookimpl
def crusoe_metrics_exporter_plugin():
    return PluginSpec(
        name=NAME,
        description="does one hostile thing: " + BEHAVIOUR,
        metrics=(MetricSpec(NAME + "_value", "gauge", "One, while it works."),
                 MetricSpec(NAME + "_series", "gauge", "Many series.", ("n",))),
        factory=Collector,
        check_support=check,
    )
'''


def plugin_name(behaviour: str) -> str:
    return f"hostile_{behaviour}"


def install_hostile(site: Path, behaviours: tuple[str, ...] = BEHAVIOURS) -> dict[str, str]:
    """Install the distribution ``hostile-plugins`` under ``site``; returns the environment that finds it."""
    modules = {plugin_name(b): _TEMPLATE.format(name=plugin_name(b), behaviour=b) for b in behaviours}
    return install_distribution(site, "hostile-plugins", "1.0", modules, {plugin_name(b): plugin_name(b)
                                                                           for b in behaviours})
