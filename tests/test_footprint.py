"""footprint: the malloc arena cap, the start-up settle and the GC pause around scrapes."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from crusoe_metrics_exporter.footprint import GcPause


def _run(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter (gc.freeze and mallopt are process-wide)."""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environ,
                          check=True)
    return done.stdout.strip()


def test_arena_cap_applies_unless_the_operator_chose() -> None:
    code = "from crusoe_metrics_exporter import footprint; print(footprint.limit_malloc_arenas())"
    assert _run(code) == "True"
    assert _run(code, {"MALLOC_ARENA_MAX": "4"}) == "False"


def test_settle_after_start_collects_cycles_and_freezes_the_survivors() -> None:
    code = """
import gc, weakref
from crusoe_metrics_exporter import footprint
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
dead = weakref.ref(a)
del a, b
kept = [Node() for _ in range(100)]
gc.disable()  # only the explicit collection may free the cycle
footprint.settle_after_start()
print(dead() is None, gc.get_freeze_count() >= 100)
"""
    assert _run(code) == "True True"


@pytest.fixture
def gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_gc_pause_is_counted_across_overlapping_scrapes(gc_enabled: object) -> None:
    pause = GcPause()
    first_in = threading.Event()
    second_out = threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with pause.held():
            first_in.set()
            second_out.wait(10)
            seen.append(gc.isenabled())  # still paused: the first scrape is inside

    t = threading.Thread(target=first)
    t.start()
    first_in.wait(10)
    with pause.held():
        assert not gc.isenabled()
    second_out.set()
    t.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_gc_pause_leaves_a_disabled_collector_disabled(gc_enabled: object) -> None:
    gc.disable()
    with GcPause().held():
        pass
    assert not gc.isenabled()
