"""Keeping the long-running process small: malloc arenas, start-up garbage, the cyclic GC.

Three things make a Python exporter bigger and slower than it needs to be:

* glibc gives every thread that allocates its own malloc arena (up to eight
  per core), and memory freed in an arena mostly stays resident. Start-up
  threads, collect threads and probe threads each leave one behind.
  :func:`limit_malloc_arenas` caps them at two before any thread starts
  (an operator's ``MALLOC_ARENA_MAX`` wins).
* Start-up allocates much that it drops again (plugin discovery, settings,
  support checks). :func:`settle_after_start` collects it once every plugin
  has settled, hands the free pages back to the kernel (``malloc_trim``) and
  freezes what survives, so later collections never walk it again.
* A scrape of a big host allocates hundreds of thousands of tuples; each
  700 allocations trigger a young collection, and the older generations are
  walked in proportion to everything alive, so the per-series cost grows
  with the size of the host. :data:`GC_PAUSE` keeps the cyclic collector out
  of a scrape (reference counting frees a scrape's objects as before; the
  collector runs again once no scrape is in progress).

Everything here is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: mallopt() parameter number of M_ARENA_MAX in glibc's malloc.h.
_M_ARENA_MAX = -8
#: Two arenas: the main one and one shared by every other thread.
MALLOC_ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    return libc


_LIBC = _glibc()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); False when not applied."""
    if _LIBC is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def trim() -> None:
    """Return free heap pages of every arena to the kernel."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def settle_after_start() -> None:
    """Drop start-up garbage, give its pages back to the kernel and keep the survivors out of later collections."""
    gc.collect()
    gc.freeze()
    trim()


class GcPause:
    """Pauses the cyclic garbage collector while at least one holder is inside.

    Scrapes may overlap (an OpenMetrics and a text scrape at once), so the
    pause is counted; the collector is enabled again by the last one out,
    and only if it was enabled when the first one came in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


GC_PAUSE = GcPause()
