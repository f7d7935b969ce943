"""RPC-layer source without a kernel: map layouts, mountinfo, labels, the probe handshake, the fold.

The kernel program itself runs in the guest lane (tests/vm); here its maps
are played by dictionaries holding the exact bytes it writes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.bpf_standins import MapStandIn
from helpers.waiting import wait_until

from crusoe_metrics_exporter.plugins import nfs_latency
from crusoe_metrics_exporter.plugins._tcptrace.accumulate import Accumulator
from crusoe_metrics_exporter.plugins._tcptrace.buckets import bucket_of
from crusoe_metrics_exporter.plugins.nfs_latency import rpc_parser as rp
from crusoe_metrics_exporter.plugins.nfs_latency.parser import VECTOR_WIDTH
from crusoe_metrics_exporter.plugins.nfs_latency.rpc_probe import ProbeRunner
from crusoe_metrics_exporter.plugins.nfs_latency.rpc_source import (
    LOAD_RETRY_SECONDS,
    PROBE_RETRY_SECONDS,
    RpcSource,
    _Failed,
    _Mapped,
)
from crusoe_metrics_exporter.sdk import HistogramValue
from crusoe_metrics_exporter.targets.volumes import compile_volume_pattern
from crusoe_metrics_exporter.testing import PluginHarness, StaticTargets

PATTERN = compile_volume_pattern(r"/volumes/(?P<volume_id>.+)$")


def test_bounds_declared_once_and_fine_enough() -> None:
    spec = nfs_latency.crusoe_metrics_exporter_plugin()
    for name in ("nfs_rpc_rtt_seconds", "nfs_rpc_execute_seconds", "nfs_rpc_queue_seconds"):
        assert spec.metric(name).buckets == rp.RPC_BUCKETS
    assert rp.RPC_BUCKETS[0] == 50e-6 and rp.RPC_BUCKETS[-1] == 60.0
    ratios = [b / a for a, b in zip(rp.RPC_BUCKETS, rp.RPC_BUCKETS[1:], strict=False)]
    assert max(ratios) <= 5 / 3 + 1e-9
    assert rp.RPC_VALUE.size == 8 * rp.RPC_WIDTH
    assert rp.RPC_KEY.size == 32


def entry(clid: int, gen: int, op: str, count: int = 0, rtt_ns: int = 0, **fields: int) -> tuple[bytes, bytes]:
    """An rpc_stats entry as the kernel writes it: ``count`` RPCs of ``rtt_ns`` each."""
    values = [0] * rp.RPC_WIDTH
    values[rp.COUNT] = count
    values[rp.RTT_NS] = count * rtt_ns
    values[rp.EXECUTE_NS] = count * rtt_ns * 2
    values[rp.ERRORS] = fields.get("errors", 0)
    values[rp.RETRANSMITS] = fields.get("retransmits", 0)
    values[rp.RPC_SCALARS + rp.RPC_SLOTS + bucket_of(rp.RPC_BUCKETS, rtt_ns)] = count
    values[rp.RPC_SCALARS + 2 * rp.RPC_SLOTS + bucket_of(rp.RPC_BUCKETS, 2 * rtt_ns)] = count
    values[rp.RPC_SCALARS + rp.RPC_SLOTS * 3 + bucket_of(rp.SEED_BUCKETS, rtt_ns)] = count
    values[rp.RPC_SCALARS] = count  # queue 0
    return rp.RPC_KEY.pack(clid, gen, op.encode()), rp.RPC_VALUE.pack(*values)


def test_parse_rpc_entry_and_malformed_keys() -> None:
    key, value = entry(7, 1, "GETATTR", count=3, rtt_ns=2_000_000)
    parsed = rp.parse_rpc_entry(key, value)
    assert parsed.client == rp.ClientKey(7, 1) and parsed.op == "GETATTR"
    assert parsed.vector[rp.COUNT] == 3 and parsed.vector[rp.RTT_NS] == 6_000_000
    go = rp.go_vector(parsed.vector)
    assert len(go) == VECTOR_WIDTH and go[0] == 6_000_000 and sum(go[2:]) == 3
    with pytest.raises(ValueError):
        rp.parse_rpc_entry(key[:-1], value)
    with pytest.raises(ValueError):
        rp.parse_rpc_entry(key, value[:-8])
    with pytest.raises(ValueError):
        rp.parse_rpc_entry(rp.RPC_KEY.pack(1, 0, b"\xff\xfe"), value)
    assert rp.valid_operation_name("READ") and rp.valid_operation_name("BIND_CONN_TO_SESSION")
    assert not rp.valid_operation_name("READ WRITE") and not rp.valid_operation_name("")


MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "40 22 0:52 / /mnt/a rw,relatime shared:30 - nfs4 10.0.0.5:/volumes/vol-a rw,vers=4.2,proto=tcp,nconnect=4\n"
    "41 22 0:53 / /mnt/b rw,relatime - nfs 10.0.0.5:/volumes/vol-b rw,vers=3,proto=tcp6\n"
    "42 22 0:53 / /mnt/b2 rw,relatime - nfs 10.0.0.5:/volumes/vol-b rw,vers=3,proto=tcp6\n"
    "43 22 0:54 / /mnt/with\\040space rw - nfs 10.0.0.6:/home rw,vers=3,proto=rdma\n"
    "44 22 0:55 /x /mnt/c rw - nfs 10.0.0.5:/volumes/vol-c rw,vers=3\n"
    "45 22 0:55 /y /mnt/d rw - nfs 10.0.0.5:/volumes/vol-d rw,vers=3\n"
    "garbage line\n"
    "46 22 0:56 / /mnt/e rw - nfs\n"
)


def test_mountinfo_and_superblock_labels() -> None:
    mounts, bad = rp.parse_mountinfo(MOUNTINFO)
    assert bad == 2 and len(mounts) == 7
    assert mounts[4].mount_point == "/mnt/with space" and mounts[4].source == "10.0.0.6:/home"
    supers = rp.nfs_superblocks(mounts, PATTERN, label_unmatched_by_export=True)
    assert set(supers) == {"0:52", "0:53", "0:54", "0:55"}
    assert supers["0:52"].label == "vol-a" and supers["0:52"].protocol == "tcp"
    # two mount points, one superblock: one client, one series
    assert supers["0:53"].label == "vol-b" and supers["0:53"].mount_points == ("/mnt/b", "/mnt/b2")
    assert supers["0:53"].mount_ids == frozenset({41, 42}) and supers["0:53"].protocol == "tcp"
    # no volume id: labelled by the device, as nfs_stats does
    assert supers["0:54"].label == "10.0.0.6:/home" and supers["0:54"].protocol == "rdma"
    # two volumes sharing one superblock cannot be told apart: the label says so
    assert supers["0:55"].label == "vol-c+vol-d"
    skipped = rp.nfs_superblocks(mounts, PATTERN, label_unmatched_by_export=False)
    assert "0:54" not in skipped
    many = [f"v{i}" for i in range(12)]
    assert rp.join_labels(many) == "shared"


def test_mount_label_matches_nfs_stats() -> None:
    """The same device gives the same volume_id in nfs_stats and here, escapes included."""
    from crusoe_metrics_exporter.plugins.nfs_stats.parser import ParseOptions, parse

    device = "10.0.0.5:/volumes/vol\\040x"
    text = f"device {device} mounted on /mnt/x with fstype nfs statvers=1.1\n"
    stats = parse(text, ParseOptions(PATTERN, {}, True))
    assert list(stats.volumes) == [rp.mount_label(device, PATTERN, True)] == ["vol x"]
    other = "10.0.0.5:/srv\\040x"
    stats = parse(f"device {other} mounted on /mnt/y with fstype nfs statvers=1.1\n",
                  ParseOptions(PATTERN, {}, True))
    assert list(stats.volumes) == [rp.mount_label(other, PATTERN, True)]


# -- the probe handshake -----------------------------------------------------------------------------------


class RecordingTracer:
    def __init__(self, client: rp.ClientKey, hits: int = 1, mixed: bool = False) -> None:
        self.client, self.hits, self.mixed = client, hits, mixed
        self.armed: list[int] = []
        self.disarmed = 0

    def arm(self, tid: int) -> None:
        self.armed.append(tid)

    def result(self) -> rp.ProbeResult:
        return rp.ProbeResult(self.armed[-1], self.hits, self.client, self.mixed)

    def disarm(self) -> None:
        self.disarmed += 1


def dev_of(path: Path) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def test_probe_arms_the_child_thread_and_reads_the_client(tmp_path: Path) -> None:
    runner = ProbeRunner()
    tracer = RecordingTracer(rp.ClientKey(12, 0))
    outcome = runner.probe(str(tmp_path), dev_of(tmp_path), tracer, timeout=20)
    assert outcome.client == rp.ClientKey(12, 0), outcome.problem
    assert len(tracer.armed) == 1 and tracer.armed[0] != os.getpid() and tracer.disarmed == 1
    assert runner.stuck == 0


def test_probe_refuses_what_it_cannot_be_sure_of(tmp_path: Path) -> None:
    runner = ProbeRunner()
    # another filesystem mounted over the mount point: wrong device
    outcome = runner.probe(str(tmp_path), "0:1", RecordingTracer(rp.ClientKey(1, 0)), timeout=20)
    assert outcome.client is None and "not on device" in outcome.problem
    # statfs made no RPC on its thread (not NFS, or completed elsewhere)
    outcome = runner.probe(str(tmp_path), dev_of(tmp_path), RecordingTracer(rp.ClientKey(1, 0), hits=0), timeout=20)
    assert outcome.client is None and "no NFS RPC" in outcome.problem
    outcome = runner.probe(str(tmp_path), dev_of(tmp_path), RecordingTracer(rp.ClientKey(1, 0), mixed=True),
                           timeout=20)
    assert outcome.client is None and "more than one client" in outcome.problem
    outcome = runner.probe(str(tmp_path / "missing"), "0:1", RecordingTracer(rp.ClientKey(1, 0)), timeout=20)
    assert outcome.client is None and "No such file" in outcome.problem


def test_probe_of_a_hung_mount_is_bounded(tmp_path: Path) -> None:
    """A child that never answers (a hung NFS mount) is killed at the timeout, and nothing is left behind."""
    hang = tmp_path / "python-that-hangs"
    hang.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    hang.chmod(0o755)
    runner = ProbeRunner(python=str(hang))
    tracer = RecordingTracer(rp.ClientKey(1, 0))
    outcome = runner.probe(str(tmp_path), dev_of(tmp_path), tracer, timeout=0.5)
    assert outcome.client is None and "within 0.5s" in outcome.problem
    assert tracer.armed == [] and runner.stuck == 0


# -- the fold, with the kernel maps played by dictionaries -------------------------------------------------


class DictLoaded:
    def __init__(self) -> None:
        self.maps = {name: MapStandIn() for name in ("rpc_stats", "client_gen", "probe", "problems")}

    def map(self, name: str) -> MapStandIn:
        return self.maps[name]

    def put(self, *entries: tuple[bytes, bytes]) -> None:
        for key, value in entries:
            self.maps["rpc_stats"].update(key, value)

    def free(self, clid: int, times: int = 1) -> None:
        self.maps["client_gen"].update(rp.U32.pack(clid), rp.U32.pack(times))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_harness() -> PluginHarness:
    return PluginHarness(nfs_latency, services={"targets": StaticTargets(volume_pattern=PATTERN)})


@dataclass
class Rig:
    src: RpcSource
    loaded: DictLoaded
    go: Accumulator
    clock: Clock
    harness: PluginHarness


@pytest.fixture
def source() -> Iterator[Rig]:
    clock = Clock()
    go = Accumulator(VECTOR_WIDTH, clock=clock)
    harness = make_harness()
    src = RpcSource(harness.context, go, ["READ", "GETATTR"], clock=clock)
    loaded = DictLoaded()
    src._loaded = loaded
    yield Rig(src, loaded, go, clock, harness)


def mount(src: RpcSource, dev: str, label: str, client: rp.ClientKey, mount_id: int) -> None:
    sb = rp.Superblock(dev, label, "tcp", (f"/mnt/{label}",), frozenset({mount_id}))
    src._state.supers[dev] = sb
    src._state.by_dev[dev] = _Mapped(client, sb.mount_ids)
    src._label(client, sb)


def by_name(src: RpcSource, retention: float = 60.0) -> dict[tuple[str, tuple[str, ...]], Any]:
    return {(s.metric, s.labels): s.value for s in src.samples(retention)}


def test_fold_per_mount_and_operation(source: Rig) -> None:
    src, loaded, go = source.src, source.loaded, source.go
    mount(src, "0:52", "vol-a", rp.ClientKey(3, 0), 40)
    mount(src, "0:53", "vol-b", rp.ClientKey(4, 0), 41)
    loaded.put(entry(3, 0, "READ", count=10, rtt_ns=20_000_000), entry(3, 0, "WRITE", count=5, rtt_ns=1_000_000),
               entry(4, 0, "GETATTR", count=7, rtt_ns=300_000, errors=2, retransmits=1),
               entry(9, 0, "READ", count=99, rtt_ns=1000))  # a client no mount is known to use
    src.fold()
    s = by_name(src)
    rtt = s[("nfs_rpc_rtt_seconds", ("vol-a", "read"))]
    assert isinstance(rtt, HistogramValue) and sum(rtt.counts) == 10 and rtt.sum == pytest.approx(0.2)
    assert rtt.counts[rp.RPC_BUCKETS.index(0.02)] == 10
    assert s[("nfs_rpc_execute_seconds", ("vol-a", "read"))].sum == pytest.approx(0.4)
    assert ("nfs_rpc_rtt_seconds", ("vol-a", "write")) not in s  # not in the configured operations
    assert s[("nfs_rpc_errors_total", ("vol-b", "getattr"))] == 2
    assert s[("nfs_rpc_retransmits_total", ("vol-b", "getattr"))] == 1
    assert not any(labels[0] not in ("vol-a", "vol-b") for _, labels in s)
    # the Go families count every operation of the mount, one per RPC, RTT summed
    totals = go.totals(src.current_go_keys(), 60)
    assert totals[("tcp", "vol-a")][0] == 10 * 20_000_000 + 5 * 1_000_000
    assert sum(totals[("tcp", "vol-a")][2:]) == 15
    # an unmapped live client asks the worker to look for its mount
    assert src._wake.is_set()


def test_late_mapping_gets_everything_and_counts_only_grow(
    source: Rig,
) -> None:
    src, loaded = source.src, source.loaded
    loaded.put(entry(3, 0, "READ", count=10, rtt_ns=1_000_000))
    src.fold()
    assert by_name(src) == {}
    mount(src, "0:52", "vol-a", rp.ClientKey(3, 0), 40)
    loaded.put(entry(3, 0, "READ", count=12, rtt_ns=1_000_000))
    src.fold()
    assert sum(by_name(src)[("nfs_rpc_rtt_seconds", ("vol-a", "read"))].counts) == 12
    loaded.put(entry(3, 0, "READ", count=15, rtt_ns=1_000_000))
    src.fold()
    assert sum(by_name(src)[("nfs_rpc_rtt_seconds", ("vol-a", "read"))].counts) == 15


def test_unmount_keeps_the_series_for_retention_and_a_reused_client_id_is_a_new_client(
    source: Rig,
) -> None:
    src, loaded, go, clock = source.src, source.loaded, source.go, source.clock
    mount(src, "0:52", "vol-a", rp.ClientKey(3, 0), 40)
    mount(src, "0:53", "vol-b", rp.ClientKey(4, 0), 41)
    loaded.put(entry(3, 0, "READ", count=10, rtt_ns=1_000_000), entry(4, 0, "READ", count=1, rtt_ns=1_000_000))
    src.fold()
    # vol-a is unmounted: its client does two last RPCs and is freed; the id
    # goes to a new mount's client, which the probe maps to vol-c.
    del src._state.supers["0:52"], src._state.by_dev["0:52"]
    loaded.put(entry(3, 0, "READ", count=12, rtt_ns=1_000_000))
    loaded.free(3)
    loaded.put(entry(3, 1, "READ", count=4, rtt_ns=1_000_000))
    mount(src, "0:60", "vol-c", rp.ClientKey(3, 1), 50)
    clock.now += 10
    src.fold()
    s = by_name(src, retention=30)
    assert sum(s[("nfs_rpc_rtt_seconds", ("vol-a", "read"))].counts) == 12  # final values folded
    assert sum(s[("nfs_rpc_rtt_seconds", ("vol-c", "read"))].counts) == 4  # not vol-a's
    # the dead client's entries are gone from the kernel map, its mapping too
    assert [rp.parse_rpc_entry(k, v).client for k, v in loaded.map("rpc_stats").items()] == [
        rp.ClientKey(4, 0), rp.ClientKey(3, 1)]
    assert rp.ClientKey(3, 0) not in src._state.clients
    # vol-a stays until retention runs out; vol-b is untouched
    clock.now += 31
    loaded.put(entry(4, 0, "READ", count=2, rtt_ns=1_000_000))
    src.fold()
    s = by_name(src, retention=30)
    assert not any(labels[0] == "vol-a" for _, labels in s)
    assert sum(s[("nfs_rpc_rtt_seconds", ("vol-b", "read"))].counts) == 2
    assert ("tcp", "vol-a") not in go.totals(src.current_go_keys(), 30)


def test_malformed_entries_and_a_full_map_are_counted(
    source: Rig,
) -> None:
    src, loaded = source.src, source.loaded
    mount(src, "0:52", "vol-a", rp.ClientKey(3, 0), 40)
    key, value = entry(3, 0, "READ", count=1, rtt_ns=1000)
    loaded.put((key, value), (b"\x00" * 5, value), (rp.RPC_KEY.pack(3, 0, b"GETATTR"), b"\x00" * 8))
    loaded.map("problems").update(rp.U32.pack(0), (7).to_bytes(8, "little"))
    src.fold()
    assert source.harness.error_total(nfs_latency.ERRORS) == 2 + 7
    assert sum(by_name(src)[("nfs_rpc_rtt_seconds", ("vol-a", "read"))].counts) == 1
    src.fold()  # the same full-map count is not charged twice
    assert source.harness.error_total(nfs_latency.ERRORS) == 2 + 7 + 2


# -- when the worker wakes -------------------------------------------------------------------------------------
def test_the_worker_sleeps_unless_a_retry_is_owed(source: Rig) -> None:
    src, clock = source.src, source.clock
    mount(src, "0:52", "vol-a", rp.ClientKey(3, 0), 40)
    assert src.idle_wait() is None  # every superblock mapped: only a poke wakes the worker
    src._state.failed["0:53"] = _Failed(frozenset({41}), clock.now + PROBE_RETRY_SECONDS, "no answer")
    src._state.failed["0:54"] = _Failed(frozenset({42}), clock.now + 5, "no answer")
    assert src.idle_wait() == 5  # the earliest owed probe retry
    clock.now += 9
    assert src.idle_wait() == 0
    del src._state.failed["0:53"], src._state.failed["0:54"]
    assert src.idle_wait() is None


def test_a_pending_source_waits_for_a_mount_change_and_a_failed_load_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crusoe_metrics_exporter.plugins.nfs_latency import rpc_source

    checks: list[float] = []

    def no_sunrpc() -> bool:
        checks.append(time.monotonic())
        return False

    monkeypatch.setattr(rpc_source, "rpc_layer_available", no_sunrpc)
    harness = make_harness()
    src = RpcSource(harness.context, Accumulator(VECTOR_WIDTH), None)
    src.start(lambda: None)
    try:
        assert src.problem.startswith("pending") and checks
        assert src.idle_wait() is None  # no timer: the sunrpc module comes with an NFS mount, which pokes
        src.poke()
        assert wait_until(lambda: len(checks) == 2), "a poke did not make the worker look again"
        src._load_failed = True
        assert src.idle_wait() == LOAD_RETRY_SECONDS
    finally:
        src.stop()
    assert src._thread is not None and not src._thread.is_alive()


# -- which programs a kernel gets, from its tracepoint formats --------------------------------------------------
FORMATS = Path(__file__).with_name("data") / "sunrpc-6.1"


def fake_tracefs(root: Path, formats: dict[str, str]) -> Path:
    for event, text in formats.items():
        d = root / "events" / "sunrpc" / event
        d.mkdir(parents=True)
        (d / "format").write_text(text)
    return root


@pytest.fixture
def tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from crusoe_metrics_exporter.plugins.nfs_latency import rpc_source

    def use(formats: dict[str, str]) -> None:
        root = fake_tracefs(tmp_path / f"t{len(list(tmp_path.iterdir()))}", formats)
        monkeypatch.setattr(rpc_source, "TRACEFS_ROOTS", (root,))
        monkeypatch.setattr(rpc_source, "tracepoint_exists",
                            lambda category, event: (root / "events" / category / event).is_dir())

    return use


def real_formats() -> dict[str, str]:
    return {p.stem: p.read_text() for p in FORMATS.glob("*.format")}


def test_programs_follow_the_kernels_tracepoints(tracefs: Any) -> None:
    from crusoe_metrics_exporter.plugins.nfs_latency import rpc_source

    # Debian 12's 6.1: all four, with every field the program reads
    tracefs(real_formats())
    assert rpc_source.rpc_layer_available()
    spec = rpc_source.build_spec("nfs_latency", 1024)
    assert [p.role for p in spec.programs] == ["rpc_stats", "rpc_errors", "rpc_retransmits", "rpc_clients"]
    assert all(p.candidates[0].target.startswith("sunrpc:") for p in spec.programs)
    assert "-DRPC_MAX_ENTRIES=1024" in spec.cflags
    # an older xprt_retransmit without the procedure name: that program is left out, the rest stays
    formats = real_formats()
    formats["xprt_retransmit"] = "\n".join(line for line in formats["xprt_retransmit"].splitlines()
                                           if "procname" not in line)
    del formats["rpc_clnt_free"]
    tracefs(formats)
    assert [p.role for p in rpc_source.build_spec("nfs_latency", 64).programs] == ["rpc_stats", "rpc_errors"]
    # no sunrpc module loaded: no RPC layer, the TCP level goes on
    tracefs({})
    assert not rpc_source.rpc_layer_available()
