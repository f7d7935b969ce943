"""A real NFS server and client inside the test guest, a known workload, and the kernel's own accounting.

nfsd exports directories shaped like Crusoe volumes (``/volumes/<uuid>``);
the guest mounts one over NFSv3 and one over NFSv4.2, both with
``nconnect=4``, from 127.0.0.1. :func:`run_workload` drives traffic with
known byte counts (dd, fio) and metadata traffic (stat after dropping
caches) under a watchdog per phase. :func:`parse_mountstats` is a small
parser of our own, independent of the nfs_stats plugin's, for comparing
what the plugin exports with the kernel's file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers.guest import PhaseHung, run_phase

NFS_PORT = 2049
NFSD_THREADS = 8
LEASE_SECONDS = 10
#: Bytes dd writes per mount, in MiB (emulated throughput is ~10 MB/s).
DD_MIB = 8
FIO_READ_BYTES = 4 * 1024 * 1024
META_FILES = 40
META_ROUNDS = 3
PHASE_TIMEOUT = 180.0


def sh(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def _mounted(path: str) -> bool:
    return sh("mountpoint", "-q", path, check=False).returncode == 0


@dataclass(frozen=True)
class NfsMount:
    version: str  # "3" or "4.2"
    volume_id: str
    export: Path
    mountpoint: Path

    @property
    def device(self) -> str:
        return f"127.0.0.1:{self.export}"

    @property
    def name(self) -> str:
        return f"nfsv{self.version}"


@dataclass
class NfsServer:
    """nfsd with its helpers (rpcbind, statd, mountd), exporting /volumes/<uuid> directories."""

    exports: list[Path] = field(default_factory=list)
    running: bool = False
    #: Exports that are file systems of their own (tmpfs), with the fsid nfsd needs for them.
    fsids: dict[Path, int] = field(default_factory=dict)

    def start(self) -> None:
        sh("modprobe", "-a", "nfsd", "nfs", "nfsv3", "nfsv4")
        if not _mounted("/proc/fs/nfsd"):
            sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
        # Short grace and lease: v4 state would otherwise wait ~90 s after start.
        for knob in ("nfsv4gracetime", "nfsv4leasetime"):
            Path(f"/proc/fs/nfsd/{knob}").write_text(f"{LEASE_SECONDS}\n")
        Path("/var/lib/nfs/rpc_pipefs").mkdir(parents=True, exist_ok=True)
        if not _mounted("/var/lib/nfs/rpc_pipefs"):
            sh("mount", "-t", "rpc_pipefs", "sunrpc", "/var/lib/nfs/rpc_pipefs")
        Path("/run/rpcbind").mkdir(parents=True, exist_ok=True)
        sh("rpcbind", "-w")
        sh("rpc.statd", "--no-notify")
        self.write_exports()
        sh("rpc.mountd")
        self.start_nfsd()

    def add_export(self) -> Path:
        path = Path("/volumes") / str(uuid.uuid4())
        path.mkdir(parents=True)
        self.exports.append(path)
        return path

    def add_volume_fs(self, volume_id: str | None = None) -> Path:
        """An export that is a file system of its own, as every Crusoe volume is: two of them never share a
        superblock (and so an RPC client) on the NFS client, while directories of one file system do."""
        path = Path("/volumes") / (volume_id or str(uuid.uuid4()))
        path.mkdir(parents=True, exist_ok=True)
        if not _mounted(str(path)):
            sh("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path))
        if path not in self.exports:
            self.exports.append(path)
            # tmpfs has no UUID for nfsd to derive a file handle from: give it an fsid.
            self.fsids[path] = 100 + len(self.fsids)
        return path

    def write_exports(self) -> None:
        opts = "rw,sync,no_subtree_check,no_root_squash,insecure"
        Path("/etc/exports").write_text("".join(
            f"{p} 127.0.0.1({opts}{f',fsid={self.fsids[p]}' if p in self.fsids else ''})\n" for p in self.exports
        ))
        sh("exportfs", "-ra")

    def start_nfsd(self) -> None:
        sh("rpc.nfsd", str(NFSD_THREADS))
        self.running = True

    def stop_nfsd(self) -> None:
        """Stop serving (threads to 0: port 2049 closes); mounts stay and retry until it is back."""
        sh("rpc.nfsd", "0")
        self.running = False

    def threads(self) -> int:
        return int(Path("/proc/fs/nfsd/threads").read_text().strip() or 0)


def mount(server: NfsServer, version: str) -> NfsMount:
    export = server.add_export()
    server.write_exports()
    mountpoint = Path(f"/mnt/nfsv{version}")
    mountpoint.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "nfs", "-o", f"vers={version},nconnect=4,hard,proto=tcp", f"127.0.0.1:{export}",
       str(mountpoint), timeout=120)
    nfs = NfsMount(version, export.name, export, mountpoint)
    # Every lane connects on first use; touch the mount so all four exist before anyone counts.
    run_phase(f"{nfs.name} warm-up", ["sh", "-c", f"ls -la {mountpoint} >/dev/null && : > {mountpoint}/.ready"],
              PHASE_TIMEOUT)
    return nfs


def mount_at(server: NfsServer, export: Path, version: str, mountpoint: Path) -> NfsMount:
    """Mount ``export`` (already exported) at ``mountpoint``, nconnect=4 over 127.0.0.1."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if not _mounted(str(mountpoint)):
        sh("mount", "-t", "nfs", "-o", f"vers={version},nconnect=4,hard,proto=tcp", f"127.0.0.1:{export}",
           str(mountpoint), timeout=120)
    return NfsMount(version, export.name, export, mountpoint)


def unmount(nfs: NfsMount) -> None:
    sh("umount", "-f", "-l", str(nfs.mountpoint), check=False, timeout=60)


# -- the kernel's own accounting ---------------------------------------------------------------------------
@dataclass
class MountBlock:
    """One mount's block of /proc/self/mountstats, as plain numbers."""

    device: str
    fstype: str
    mount_point: str = ""
    age: int = 0
    events: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    #: Per lane: transport name and the numbers after it.
    xprts: list[tuple[str, list[int]]] = field(default_factory=list)
    ops: dict[str, list[int]] = field(default_factory=dict)


_DEVICE = re.compile(r"^device (\S+) mounted on (\S+) with fstype (\S+)")


def parse_mountstats(text: str, by_mount_point: bool = False) -> dict[str, MountBlock]:
    """Blocks of NFS mounts by device (or by mount point), straight from the kernel's text."""
    blocks: dict[str, MountBlock] = {}
    current: MountBlock | None = None
    in_ops = False
    for raw in text.splitlines():
        line = raw.strip()
        match = _DEVICE.match(raw)
        if match:
            current = (MountBlock(match.group(1), match.group(3), match.group(2))
                       if match.group(3).startswith("nfs") else None)
            if current is not None:
                blocks[current.mount_point if by_mount_point else current.device] = current
            in_ops = False
            continue
        if current is None or not line:
            continue
        key, _, rest = line.partition(":")
        if key == "age":
            current.age = int(rest)
        elif key == "events":
            current.events = [int(v) for v in rest.split()]
        elif key == "bytes":
            current.bytes = [int(v) for v in rest.split()]
        elif key == "xprt":
            transport, *numbers = rest.split()
            current.xprts.append((transport, [int(v) for v in numbers]))
        elif line == "per-op statistics":
            in_ops = True
        elif in_ops and rest:
            current.ops[key] = [int(v) for v in rest.split()]
    return blocks


def mountstats(device: str) -> MountBlock:
    return parse_mountstats(Path("/proc/self/mountstats").read_text())[device]


#: Fields of a per-op line after its name.
OPS, NTRANS, TIMEOUTS, BYTES_SENT, BYTES_RECV, QUEUE_MS, RTT_MS, EXECUTE_MS, ERRORS = range(9)


def ops_delta(before: MountBlock, after: MountBlock) -> dict[str, list[int]]:
    """Per-op lines that changed between two reads of one mount's block: op -> field differences."""
    out = {}
    for op, numbers in after.ops.items():
        old = before.ops.get(op, [0] * len(numbers))
        if numbers != old:
            out[op] = [a - b for a, b in zip(numbers, old, strict=True)]
    return out


def wait_quiet(mount_points: list[Path], settle: float = 1.0, timeout: float = 60.0) -> None:
    """sync, then wait until the mounts' per-op counts stop moving for ``settle`` seconds."""
    sh("sync", timeout=120)
    keys = [str(p) for p in mount_points]

    def ops() -> list[dict[str, list[int]] | None]:
        blocks = parse_mountstats(Path("/proc/self/mountstats").read_text(), by_mount_point=True)
        return [blocks[k].ops if k in blocks else None for k in keys]

    deadline = time.monotonic() + timeout
    last, since = ops(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = ops()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return
    raise AssertionError(f"NFS traffic on {keys} did not settle within {timeout:.0f} s")


def total_rpcs(block: MountBlock) -> int:
    """RPCs the client sent on the mount: the per-op 'ops' counts, summed over every op."""
    return sum(numbers[0] for numbers in block.ops.values())


# -- workload ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkloadResult:
    dd_bytes: int
    fio_read_bytes: int
    phase_seconds: dict[str, float]


def drop_caches() -> None:
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_workload(nfs: NfsMount, label: str, concurrency: int = 8, light: bool = False) -> WorkloadResult:
    """Known bytes (dd), metadata (stat after dropping caches), concurrent direct reads (fio), each watched.

    ``light``: an eighth of the data and one metadata round (for runs under a netem delay).
    """
    root = nfs.mountpoint / label
    dd_mib, files, rounds, fio_bytes = (1, 10, 1, FIO_READ_BYTES // 8) if light else (
        DD_MIB, META_FILES, META_ROUNDS, FIO_READ_BYTES)
    phases: dict[str, float] = {}

    def phase(name: str, argv: list[str]) -> str:
        started = time.monotonic()
        out = run_phase(f"{nfs.name} {label}: {name}", argv, PHASE_TIMEOUT).stdout
        phases[name] = time.monotonic() - started
        return out

    phase("mkdir", ["mkdir", "-p", str(root / "meta")])
    phase("dd write", ["dd", "if=/dev/urandom", f"of={root / 'data'}", "bs=1M", f"count={dd_mib}", "conv=fsync",
                       "status=none"])
    phase("create files", ["sh", "-c", f'for i in $(seq {files}); do : > "{root}/meta/f$i"; done'])
    for round_ in range(rounds):
        drop_caches()
        phase(f"stat round {round_}", ["sh", "-c", f'stat "{root}"/meta/* > /dev/null'])
    drop_caches()
    out = phase("concurrent direct reads", [
        "fio", "--name=directreads", f"--filename={root / 'data'}", "--direct=1", "--rw=randread", "--bs=64k",
        "--ioengine=libaio", f"--iodepth={concurrency}", "--numjobs=1", f"--io_size={fio_bytes}",
        "--randrepeat=0", "--output-format=json",
    ])
    report = json.loads(out[out.index("{"):])
    read = sum(int(job["read"]["io_bytes"]) for job in report["jobs"])
    return WorkloadResult(dd_mib * 1024 * 1024, read, phases)


def run_workload_checked(nfs: NfsMount, label: str, control: dict[str, WorkloadResult] | None,
                         light: bool = False) -> WorkloadResult:
    """:func:`run_workload` with the exporter running; a hang the control run did not have is our bug."""
    try:
        return run_workload(nfs, label, light=light)
    except PhaseHung as exc:
        if control is not None and nfs.name in control:
            raise PhaseHung(f"OUR BUG: the workload hung with the exporter running but ran clean without it "
                            f"(control phases: {control[nfs.name].phase_seconds}).\n{exc}") from None
        raise


@contextlib.contextmanager
def netem_delay(ms: int, device: str = "lo") -> Iterator[None]:
    """A fixed delay on every packet leaving ``device``: on loopback each request and reply pays it once."""
    sh("tc", "qdisc", "add", "dev", device, "root", "netem", "delay", f"{ms}ms")
    try:
        yield
    finally:
        sh("tc", "qdisc", "del", "dev", device, "root", check=False)


@contextlib.contextmanager
def netem_towards(port: int, ms: int, device: str = "lo") -> Iterator[None]:
    """Delay only the packets to ``port`` (the requests, not the replies) by ``ms`` on ``device``."""
    sh("tc", "qdisc", "add", "dev", device, "root", "handle", "1:", "prio")
    try:
        sh("tc", "qdisc", "add", "dev", device, "parent", "1:3", "handle", "30:", "netem", "delay", f"{ms}ms")
        sh("tc", "filter", "add", "dev", device, "protocol", "ip", "parent", "1:0", "prio", "1", "u32",
           "match", "ip", "dport", str(port), "0xffff", "flowid", "1:3")
        yield
    finally:
        sh("tc", "qdisc", "del", "dev", device, "root", check=False)


def dev_of(path: Path) -> str:
    """``major:minor`` of the file system ``path`` is on (an NFS superblock's, for a mount point)."""
    st = path.stat()
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def client_sockets(port: int = NFS_PORT) -> list[dict[str, int]]:
    """TCP byte counters of the NFS client's sockets to 127.0.0.1:``port`` (``ss -tin``), per socket."""
    proc = sh("ss", "-H", "-tin", "state", "established", "dst", f"127.0.0.1:{port}")
    out = []
    for line in proc.stdout.splitlines():
        fields = dict(re.findall(r"\b(bytes_sent|bytes_received|bytes_acked|bytes_retrans):(\d+)", line))
        if fields:
            out.append({k: int(v) for k, v in fields.items()})
    return out
