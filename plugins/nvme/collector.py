"""nvme collector: controllers and identity on a timer; SMART logs per scrape, each controller on its own.

Discovery and identity (sysfs) are refreshed every ``refresh_interval`` on a
background thread, never in a scrape. A scrape starts one short-lived
thread per controller to read its SMART log and waits for all of them until
``smart_timeout``: a controller that fails or hangs costs only its own SMART
series and one error; the others are reported. A read still stuck in the
kernel is not started again; the controller is counted as failing until it
returns.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from crusoe_metrics_exporter.plugins.nvme import ERRORS_METRIC, NvmeOptions, smart_timeout
from crusoe_metrics_exporter.plugins.nvme import metrics as m
from crusoe_metrics_exporter.plugins.nvme.admin import LOG_SMART, get_log_page
from crusoe_metrics_exporter.plugins.nvme.smart import LOG_PAGE_SIZE, SmartLog, parse_smart_log
from crusoe_metrics_exporter.plugins.nvme.sysfs import Controller, controller_names, read_controller
from crusoe_metrics_exporter.sdk import PluginContext, ProblemLog, Sample, open_char_device

KELVIN_AT_ZERO_CELSIUS = 273.15


class CannotOpen(OSError):
    """The device node could not be opened (as opposed to the command being refused)."""


def open_controller(controller: Controller) -> int:
    """Open the controller's device node read-only; raises CannotOpen.

    The node must be the device sysfs names: a /dev that is not the host's
    (a container) could hold another device under this name.
    """
    try:
        fd = open_char_device(controller.device)
    except OSError as exc:
        raise CannotOpen(exc.errno, exc.strerror, str(controller.device)) from None
    rdev = os.fstat(fd).st_rdev
    found = (os.major(rdev), os.minor(rdev))
    if controller.devnum is not None and found != controller.devnum:
        os.close(fd)
        raise CannotOpen(f"{controller.device} is device {found[0]}:{found[1]}, sysfs says "
                         f"{controller.devnum[0]}:{controller.devnum[1]}")
    return fd


def read_smart_log(controller: Controller) -> SmartLog:
    """The controller's SMART log; raises CannotOpen, OSError (the command refused) or ValueError."""
    fd = open_controller(controller)
    try:
        return parse_smart_log(get_log_page(fd, LOG_SMART, LOG_PAGE_SIZE))
    finally:
        os.close(fd)


SmartSource = Callable[[Controller], SmartLog]


class SmartRead:
    """One SMART read on its own daemon thread; ``done`` is set when it returned or failed."""

    def __init__(self, controller: Controller, read: SmartSource) -> None:
        self.controller = controller
        self._read = read
        self.started = time.monotonic()
        self.done = threading.Event()
        self.log: SmartLog | None = None
        self.error: Exception | None = None
        threading.Thread(target=self._run, name=f"nvme-smart-{controller.name}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.log = self._read(self.controller)
        except (OSError, ValueError) as exc:
            self.error = exc
        finally:
            self.done.set()


def smart_samples(device: str, serial: str, log: SmartLog) -> list[Sample]:
    labels = (device, serial)
    out = [Sample(m.CRITICAL_WARNING, (device, serial, bit), float(value)) for bit, value in log.warning_bits()]
    out += [
        Sample(m.MEDIA_ERRORS, labels, float(log.media_errors)),
        Sample(m.ERROR_LOG_ENTRIES, labels, float(log.error_log_entries)),
        Sample(m.PERCENTAGE_USED, labels, float(log.percentage_used)),
        Sample(m.AVAILABLE_SPARE, labels, float(log.available_spare)),
        Sample(m.POWER_ON_HOURS, labels, float(log.power_on_hours)),
        Sample(m.UNSAFE_SHUTDOWNS, labels, float(log.unsafe_shutdowns)),
    ]
    if log.temperature_kelvin:  # 0: the controller reports no composite temperature
        out.append(Sample(m.TEMPERATURE, labels, log.temperature_kelvin - KELVIN_AT_ZERO_CELSIUS))
    return out


class NvmeCollector:
    def __init__(self, ctx: PluginContext[NvmeOptions], read_smart: SmartSource = read_smart_log) -> None:
        """``read_smart`` replaces the ioctl in tests on hosts without NVMe (the guest tests use the real one)."""
        self._ctx = ctx
        self._read_smart = read_smart
        self._sysfs = Path(ctx.options.sysfs_path)
        self._dev = Path(ctx.options.dev_path)
        self._refresh_interval = ctx.options.refresh_interval
        self._timeout = smart_timeout(ctx)
        self._lock = threading.Lock()
        self._controllers: tuple[Controller, ...] = ()
        self._inflight: dict[str, SmartRead] = {}
        self._problems: dict[str, ProblemLog] = {}
        self._discovery = ProblemLog(ctx.log, f"{self._sysfs}/class/nvme")
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- discovery and identity, on the timer ----------------------------------------
    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._refresh_loop, name="nvme-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def refresh(self) -> None:
        """Rediscover controllers and re-read their identity; keeps the last list when sysfs fails."""
        try:
            names = controller_names(self._sysfs)
        except FileNotFoundError:
            names = []  # no NVMe driver loaded (any more): no controllers, not an error
        except OSError as exc:
            self._ctx.errors.inc(ERRORS_METRIC)
            self._discovery.report(f"cannot list {self._sysfs}/class/nvme: {exc.strerror or exc}; "
                                   "keeping the controllers known before")
            return
        self._discovery.report("")
        controllers = tuple(read_controller(self._sysfs, self._dev, name) for name in names)
        for c in controllers:
            if c.problem:
                self._ctx.errors.inc(ERRORS_METRIC)
            self._problem_log(f"{c.name} identity").report(
                f"{c.name}: identity incomplete: {c.problem}" if c.problem else "")
        with self._lock:
            changed = [c.name for c in controllers] != [c.name for c in self._controllers]
            self._controllers = controllers
        self._ctx.details["controllers"] = ", ".join(f"{c.name} ({c.identity.serial})" for c in controllers) or "none"
        if changed:
            self._ctx.log.info("NVMe controllers: %s", self._ctx.details["controllers"])

    def _refresh_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._refresh_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the timer must survive; the next round retries
                self._ctx.errors.inc(ERRORS_METRIC)
                self._ctx.log.warning("NVMe refresh failed: %s: %s", type(exc).__name__, exc)

    def _problem_log(self, subject: str) -> ProblemLog:
        # setdefault is atomic: the refresh thread and a scrape may both get here.
        return self._problems.setdefault(subject, ProblemLog(self._ctx.log, subject))

    # -- a scrape --------------------------------------------------------------------
    def collect(self) -> list[Sample]:
        with self._lock:
            controllers = self._controllers
            reads: list[tuple[Controller, SmartRead, bool]] = []
            for c in controllers:
                running = self._inflight.get(c.name)
                stuck = running is not None and not running.done.is_set()
                if not stuck:
                    running = self._inflight[c.name] = SmartRead(c, self._read_smart)
                assert running is not None
                reads.append((c, running, stuck))
        deadline = time.monotonic() + self._timeout
        samples: list[Sample] = []
        for c, read, stuck in reads:
            identity = c.identity
            samples.append(Sample(m.INFO, (c.name, identity.serial, identity.model, identity.firmware_rev), 1.0))
            answered = not stuck and read.done.wait(max(0.0, deadline - time.monotonic()))
            if answered and read.log is not None:
                samples.extend(smart_samples(c.name, identity.serial, read.log))
                self._problem_log(c.name).report("")
                continue
            self._ctx.errors.inc(ERRORS_METRIC)
            if answered:
                problem = f"{c.name}: cannot read the SMART log: {read.error}"
                if isinstance(read.error, FileNotFoundError):
                    self._wake.set()  # gone: rediscover now rather than at the next interval
            else:
                problem = (f"{c.name}: the SMART log read has not returned for "
                           f"{time.monotonic() - read.started:.0f}s; the controller is left out until it does")
            self._problem_log(c.name).report(problem)
        return samples
