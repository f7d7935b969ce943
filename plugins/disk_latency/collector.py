"""disk_latency collector: loads the programs at start, turns the kernel's per-disk maps into samples."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from importlib import resources

from crusoe_metrics_exporter.plugins.disk_latency.parser import (
    DEVICE_SLOTS,
    NBUCKETS,
    VALUE_SIZE,
    DiskStats,
    SideStats,
    bucket_search_c,
    decode_key,
    decode_value,
    dev_t,
    device_slots,
    empty_stats,
    encode_slot_index,
    encode_value,
    merge,
)
from crusoe_metrics_exporter.sdk import (
    AttachCandidate,
    BpfMap,
    BpfSpec,
    BpfUnavailable,
    BtfEnum,
    BtfOffset,
    BtfTracepoint,
    DeviceOptions,
    Kprobe,
    LoadedBpf,
    PluginContext,
    ProgramSpec,
    RawTracepoint,
    Sample,
    Tracepoint,
    device_names,
)

ERRORS = "disk_collection_errors_total"
SLOTS_MAP = "disk_slots"
OTHER_MAP = "disk_other"
#: Distinct disks the overflow hash map tracks beyond the assigned slots.
MAX_DEVICES = 1024
#: In-flight table size: 512 four-way sets (32 KiB). With 256 requests in flight
#: about 0.2 % of them find their set full (the oldest is dropped); with 64, 1e-5.
INFLIGHT_SLOTS = 2048
#: How old the device table (/proc/diskstats names) may get before a scrape
#: asks for a re-read, so hot-plugged disks get names and slots and removed
#: ones vanish. The read runs on the plugin's own thread (never in a scrape),
#: woken by scrapes rather than a clock: nobody scraping, nothing wakes.
TABLE_REFRESH_SECONDS = 5.0
#: How long stop() waits for a refresh in progress (a read is bounded; this is a backstop).
STOP_JOIN_SECONDS = 5.0

_EMPTY_SIDE = SideStats(0, 0, 0, 0, (0,) * NBUCKETS)

#: struct request and friends, read by the request-based variants at the
#: running kernel's offsets (from its BTF).
KERNEL_CONSTANTS = (
    BtfOffset("CME_RQ_Q", "request", "q"),
    BtfOffset("CME_RQ_CMD_FLAGS", "request", "cmd_flags"),
    BtfOffset("CME_RQ_RQ_FLAGS", "request", "rq_flags"),
    BtfOffset("CME_RQ_DATA_LEN", "request", "__data_len"),
    BtfOffset("CME_Q_DISK", "request_queue", "disk"),
    BtfOffset("CME_DISK_MAJOR", "gendisk", "major"),
    BtfOffset("CME_DISK_FIRST_MINOR", "gendisk", "first_minor"),
    BtfEnum("CME_RQF_FLUSH_SEQ_BIT", "__RQF_FLUSH_SEQ"),
)
_REQUEST_FIELDS = tuple(c.macro for c in KERNEL_CONSTANTS if isinstance(c, BtfOffset))

#: role -> (block tracepoint, kprobe fallback function). The C names each
#: variant after its kind: btf_<event>, raw_<event>, tracepoint__block__<event>,
#: kprobe_<function>.
HOOKS = {
    "issue": ("block_rq_issue", "blk_mq_start_request"),
    "requeue": ("block_rq_requeue", "blk_mq_requeue_request"),
    "complete": ("block_rq_complete", "blk_mq_end_request"),
}
#: Attach kinds in order of preference (docs/ebpf.md, "Attach kinds").
KINDS = ("tp_btf", "raw_tracepoint", "tracepoint", "kprobe")


def _candidate(kind: str, event: str, function: str) -> AttachCandidate:
    if kind == "tp_btf":
        return BtfTracepoint("block", event, f"btf_{event}", needs=_REQUEST_FIELDS)
    if kind == "raw_tracepoint":
        return RawTracepoint("block", event, f"raw_{event}", needs=_REQUEST_FIELDS)
    if kind == "tracepoint":
        return Tracepoint("block", event, f"tracepoint__block__{event}")
    return Kprobe(function, f"kprobe_{function}", needs=_REQUEST_FIELDS)


def bpf_spec(kinds: tuple[str, ...] = KINDS) -> BpfSpec:
    """The eBPF object; ``kinds`` narrows the attach kinds (tests compare them)."""
    source = resources.files(__package__).joinpath("disk_latency.c").read_text()
    source = source.replace("/*@BUCKET_FUNCTION@*/", bucket_search_c())
    return BpfSpec(
        name="disk_latency",
        source=source,
        cflags=(
            f"-DCME_NBUCKETS={NBUCKETS}",
            f"-DCME_DEVICE_SLOTS={DEVICE_SLOTS}",
            f"-DCME_MAX_DEVICES={MAX_DEVICES}",
            f"-DCME_INFLIGHT_SLOTS={INFLIGHT_SLOTS}",
        ),
        programs=tuple(
            ProgramSpec(role, tuple(_candidate(kind, event, function) for kind in kinds))
            for role, (event, function) in HOOKS.items()
        ),
        kernel_constants=KERNEL_CONSTANTS,
        # The in-flight table is keyed by what the kind sees (a request, or
        # a device and sector): issue, requeue and complete must agree.
        attach_together=True,
    )


class DiskLatencyCollector:
    def __init__(self, ctx: PluginContext[DeviceOptions]) -> None:
        self.ctx = ctx
        self.filter = ctx.options.device_filter()
        self.loaded: LoadedBpf | None = None
        self.table_refresh_seconds = TABLE_REFRESH_SECONDS
        #: (major, minor) -> kernel name, from /proc/diskstats.
        self._names: dict[tuple[int, int], str] = {}
        #: dev_t -> ARRAY slot it owns.
        self._slots: dict[int, int] = {}
        #: Held while the maps or the two tables above change or are read; never while reading a file.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        #: Set by a scrape that found the table older than table_refresh_seconds.
        self._refresh_wanted = threading.Event()
        self._refreshed_at = 0.0
        self._refresher: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.loaded = self.ctx.ebpf.load(self.ctx.plugin, bpf_spec())
        except BpfUnavailable as exc:
            # One line for the plugin's state; the host turns this into "failed".
            raise RuntimeError(str(exc)) from None
        for name in (SLOTS_MAP, OTHER_MAP):
            size = self.loaded.map(name).value_size
            if size != VALUE_SIZE:
                raise RuntimeError(f"map {name} holds {size}-byte values, expected {VALUE_SIZE}")
        self.ctx.details.update(self.loaded.details())
        # The first table synchronously, so the first scrape names every disk.
        self.refresh()
        self._refresher = threading.Thread(target=self._refresh_loop, name=f"{self.ctx.plugin}-devices", daemon=True)
        self._refresher.start()

    def _refresh_loop(self) -> None:
        while True:
            self._refresh_wanted.wait()
            if self._stopping.is_set():
                return
            self._refresh_wanted.clear()
            try:
                self.refresh()
            except Exception:  # the thread must outlive one bad round (a map error): counted and logged
                self.ctx.errors.inc(ERRORS)
                self.ctx.log.warning("refreshing disk_latency's device table failed", exc_info=True)

    def _maps(self) -> tuple[BpfMap, BpfMap]:
        assert self.loaded is not None
        return self.loaded.map(SLOTS_MAP), self.loaded.map(OTHER_MAP)

    def refresh(self) -> None:
        """Re-read device names (outside the lock: a scrape never waits for the file), then update the maps."""
        self._refreshed_at = time.monotonic()
        names = device_names(self.ctx.host_proc)
        if not names:
            # Unreadable table: keep the old one rather than dropping every disk.
            self.ctx.errors.inc(ERRORS)
            return
        with self._lock:
            if self.loaded is not None:
                self._apply(names)

    def _apply(self, names: dict[tuple[int, int], str]) -> None:
        """Take ``names`` as the device table: forget removed disks, give reported disks their slots."""
        self._names = names
        present = {dev_t(*dev) for dev in names}
        wanted = {dev_t(*dev) for dev, name in names.items() if self.filter.matches(name)}
        slots_map, other_map = self._maps()
        owners: dict[int, int] = {}
        for index in range(DEVICE_SLOTS):
            raw = slots_map.lookup(encode_slot_index(index))
            owners[index] = decode_value(raw).owner if raw is not None else 0
        for index, owner in owners.items():
            if owner and owner not in present:
                # A removed disk: free the slot so a later disk with the same
                # major:minor starts from zero instead of inheriting counters.
                slots_map.update(encode_slot_index(index), encode_value(empty_stats()))
                owners[index] = 0
        for key in other_map.keys():  # noqa: SIM118 - a BPF map, not a dict
            if dev_t(*decode_key(key)) not in present:
                other_map.delete(key)
        owned = {owner: index for index, owner in owners.items() if owner}
        for dev in sorted(wanted - owned.keys()):
            for index in device_slots(dev):
                if owners[index] == 0:
                    slots_map.update(encode_slot_index(index), encode_value(empty_stats(dev)))
                    owners[index] = dev
                    owned[dev] = index
                    break
            # Both candidate slots taken: the disk is counted in the hash map.
        self._slots = {dev: index for dev, index in owned.items() if dev in wanted}

    def collect(self) -> Iterable[Sample]:
        if self.loaded is None:
            return []
        if time.monotonic() - self._refreshed_at >= self.table_refresh_seconds:
            # The refresh thread reads the table; this scrape uses the last one.
            self._refresh_wanted.set()
        with self._lock:
            try:
                stats = self._read()
            except OSError:
                self.ctx.errors.inc(ERRORS)
                self.ctx.log.warning("reading disk_latency's eBPF maps failed", exc_info=True)
                return []
            samples: list[Sample] = []
            # Every selected disk gets series from the first scrape on, so
            # rate() works from its first I/O rather than its second.
            for dev, name in sorted(self._names.items(), key=lambda item: item[1]):
                if not self.filter.matches(name):
                    continue
                record = stats.get(dev_t(*dev))
                samples += _samples(
                    name, record.read if record else _EMPTY_SIDE, record.write if record else _EMPTY_SIDE
                )
        return samples

    def _read(self) -> dict[int, DiskStats]:
        slots_map, other_map = self._maps()
        out: dict[int, DiskStats] = {}
        for dev, index in self._slots.items():
            raw = slots_map.lookup(encode_slot_index(index))
            if raw is None:
                continue
            try:
                record = decode_value(raw)
            except ValueError:
                self.ctx.errors.inc(ERRORS)
                continue
            if record.owner == dev:
                out[dev] = record
        for key, raw in other_map.items():
            try:
                dev = dev_t(*decode_key(key))
                record = decode_value(raw)
            except ValueError:
                self.ctx.errors.inc(ERRORS)
                continue
            out[dev] = merge(out[dev], record) if dev in out else record
        return out

    def stop(self) -> None:
        self._stopping.set()
        self._refresh_wanted.set()
        if self._refresher is not None:
            self._refresher.join(timeout=STOP_JOIN_SECONDS)
            self._refresher = None
        with self._lock:
            if self.loaded is None:
                return
            self.ctx.ebpf.release(self.ctx.plugin, self.loaded)
            self.loaded = None


def _samples(device: str, read: SideStats, write: SideStats) -> list[Sample]:
    labels = (device,)
    return [
        Sample("disk_read_bytes_total", labels, float(read.bytes)),
        Sample("disk_write_bytes_total", labels, float(write.bytes)),
        Sample("disk_read_latency_seconds_total", labels, read.latency_ns / 1e9),
        Sample("disk_write_latency_seconds_total", labels, write.latency_ns / 1e9),
        Sample("disk_read_latency_seconds", labels, read.histogram()),
        Sample("disk_write_latency_seconds", labels, write.histogram()),
        Sample("disk_read_errors_total", labels, float(read.errors)),
        Sample("disk_write_errors_total", labels, float(write.errors)),
        Sample("disk_read_untimed_completions_total", labels, float(read.untimed)),
        Sample("disk_write_untimed_completions_total", labels, float(write.untimed)),
    ]
