"""GIL contention on demand: what a busy thread does to the other threads of an exporter."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gil_held_elsewhere() -> Iterator[None]:
    """Another thread of this process holds the GIL nearly all the time, using no CPU.

    It sleeps in C without releasing the GIL (ctypes.PyDLL), like a plugin or
    a scrape rendering a large exposition holds it while computing, but
    without taking a CPU from the peers on a small machine. Every other
    thread then waits up to the switch interval (5 ms) each time it needs the
    GIL back, e.g. after a blocking receive returns.
    """
    libc = ctypes.PyDLL(None)
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            libc.usleep(2000)

    holder = threading.Thread(target=hold, name="gil-holder", daemon=True)
    holder.start()
    try:
        yield
    finally:
        stop.set()
        holder.join()
