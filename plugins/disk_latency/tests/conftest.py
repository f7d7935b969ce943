"""Fixtures for disk_latency's kernel tests: loop devices, a busy second disk, an independent completion counter."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.silent_loss import silent_loss_margin as silent_loss_rule

from crusoe_metrics_exporter.ebpf import BpfSpec, BtfTracepoint, LoadedBpf, ProgramSpec, kernel, load
from crusoe_metrics_exporter.plugins.disk_latency import collector


@pytest.fixture
def loop_device(require_ebpf: None) -> Iterator[str]:
    """A fresh 128 MiB loop device over a sparse file; yields its kernel name (loopN)."""
    yield from _loop_device("/var/tmp")


@pytest.fixture
def memory_loop_device(require_ebpf: None) -> Iterator[str]:
    """A loop device over a file in /dev/shm: its I/O never reaches a real disk (no second device's events)."""
    yield from _loop_device("/dev/shm")


@pytest.fixture
def busy_disk(require_ebpf: None) -> Iterator[str]:
    """A second loop device kept busy by fio (4 KiB random reads and writes, 16 in flight) for the test's length.

    Its completions run the same programs on the same CPUs as the device
    under test: the condition in which main's reconciliation used to fail.
    Bounded: fio stops by itself after a minute and is stopped at teardown.
    """
    for device in _loop_device("/var/tmp"):
        fio = subprocess.Popen(
            ["fio", "--name=busy", f"--filename=/dev/{device}", "--rw=randrw", "--bs=4k", "--direct=1",
             "--ioengine=libaio", "--iodepth=16", "--time_based", "--runtime=60", "--output=/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)  # fio's start-up; the disk is busy from here on
            assert fio.poll() is None, "fio on the busy disk exited at once"
            yield device
        finally:
            fio.terminate()
            try:
                fio.wait(timeout=10)
            except subprocess.TimeoutExpired:
                fio.kill()
                fio.wait()


#: The smallest tp_btf program that counts one device's read and write
#: completion events: an independent reference for what any BPF program on
#: block_rq_complete was handed.
CONTROL_SOURCE = r"""
BPF_ARRAY(completions, u64, 1);
int control_complete(u64 *ctx)
{
    void *rq = (void *)ctx[0];
    u32 op = *(u32 *)((char *)rq + CME_RQ_CMD_FLAGS) & 0xff;
    void *q = *(void **)((char *)rq + CME_RQ_Q);
    void *disk = q ? *(void **)((char *)q + CME_Q_DISK) : 0;
    if (!disk || op > 1)
        return 0;
    u32 dev = (*(u32 *)((char *)disk + CME_DISK_MAJOR) << 20) | *(u32 *)((char *)disk + CME_DISK_FIRST_MINOR);
    u32 zero = 0;
    u64 *n = completions.lookup(&zero);
    if (n && dev == TEST_DEV)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


class CompletionControl:
    """The control program loaded for one device; ``count()`` is its completions so far."""

    def __init__(self, device: str, state_dir: Path) -> None:
        major, minor = (int(x) for x in Path(f"/sys/block/{device}/dev").read_text().split(":"))
        spec = BpfSpec(
            "control_counter",
            CONTROL_SOURCE,
            cflags=(f"-DTEST_DEV={major << 20 | minor}",),
            kernel_constants=collector.KERNEL_CONSTANTS,
            programs=(ProgramSpec("complete", (BtfTracepoint("block", "block_rq_complete", "control_complete"),)),),
        )
        self.loaded: LoadedBpf = load(spec, state_dir)

    def count(self) -> int:
        return int.from_bytes(self.loaded.map("completions").lookup(bytes(4)) or bytes(8), "little")


@pytest.fixture
def completion_control(require_ebpf: None, state_dir: Path) -> Iterator[Callable[[str], CompletionControl]]:
    """Loads the control for a device on demand (after the exporter, so both see the same events); unloads it after."""
    if not kernel.btf_available():
        pytest.skip("!!! EBPF TEST SKIPPED: the control counter is a tp_btf program; this kernel has no BTF !!!")
    controls: list[CompletionControl] = []

    def make(device: str) -> CompletionControl:
        controls.append(CompletionControl(device, state_dir))
        return controls[-1]

    yield make
    for control in controls:
        control.loaded.close()


@pytest.fixture
def silent_loss_margin() -> Callable[[int], int]:
    """Completions /proc/diskstats counts that may reach no BPF program at all (helpers/silent_loss.py)."""
    return silent_loss_rule


def _loop_device(directory: str) -> Iterator[str]:
    if shutil.which("losetup") is None:
        pytest.skip("!!! EBPF TEST SKIPPED: losetup (util-linux) is not installed !!!")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        backing = Path(tmp) / "disk.img"
        with backing.open("wb") as fh:
            fh.truncate(128 * 1024 * 1024)
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            yield os.path.basename(dev)
        finally:
            subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture
def diskstats() -> object:
    return diskstats_line


def diskstats_line(name: str) -> list[int]:
    """The numeric fields of ``name``'s /proc/diskstats line (index 0 = reads completed)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == name:
            return [int(f) for f in fields[3:]]
    raise AssertionError(f"{name} is not in /proc/diskstats")
