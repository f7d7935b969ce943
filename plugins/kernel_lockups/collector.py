"""kernel_lockups collector: a /dev/kmsg reader thread; a scrape copies its counts."""

from __future__ import annotations

import threading
import time

from crusoe_metrics_exporter.plugins.kernel_lockups import (
    ERRORS_METRIC,
    LOCKUPS_METRIC,
    KernelLockupsOptions,
    kmsg_path,
)
from crusoe_metrics_exporter.plugins.kernel_lockups.parser import KINDS, classify
from crusoe_metrics_exporter.plugins.kernel_lockups.reader import KmsgReader
from crusoe_metrics_exporter.sdk import PluginContext, Sample

#: At most one warning per this many seconds; the error counter counts every one.
WARN_INTERVAL = 60.0


class LockupCollector:
    def __init__(self, ctx: PluginContext[KernelLockupsOptions]) -> None:
        self._ctx = ctx
        self._path = kmsg_path(ctx)
        self._reader = KmsgReader(self._path, classify=classify, kinds=KINDS, on_error=self._error, log=ctx.log)
        self._warn_lock = threading.Lock()
        self._last_warning = -WARN_INTERVAL
        self._suppressed = 0

    def start(self) -> None:
        self._reader.start()
        self._ctx.details["path"] = str(self._path)

    def stop(self) -> None:
        self._reader.stop()

    @property
    def records_read(self) -> int:
        """Records read from the device since start (for tests and diagnostics)."""
        return self._reader.records_read

    def collect(self) -> list[Sample]:
        counts = self._reader.counts()
        return [Sample(LOCKUPS_METRIC, (kind,), float(counts[kind])) for kind in KINDS]

    def _error(self, reason: str) -> None:
        self._ctx.errors.inc(ERRORS_METRIC)
        with self._warn_lock:
            now = time.monotonic()
            if now - self._last_warning < WARN_INTERVAL:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_warning = self._suppressed, 0, now
        more = f" (and {suppressed} more since the last warning)" if suppressed else ""
        self._ctx.log.warning("%s%s", reason, more)
