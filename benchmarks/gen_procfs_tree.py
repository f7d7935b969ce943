"""Generate a synthetic procfs tree for the procfs benchmark.

The tree looks like a large Crusoe VM to both exporters:

* ``diskstats`` with ``--disks`` virtio disks (vda, vdb, ..., vdaa, ...), each
  with one partition, in the 20-field (5.5+) record format;
* ``1/mounts`` with the disks' first partitions mounted and ``--mounts``
  NFSv3 mounts of ``/volumes/<uuid>``;
* ``1/mountstats`` with one block per NFS mount, ``nconnect`` tcp lanes each,
  modelled on the real nconnect=16 sample in the fixtures;
* ``1/mountinfo`` in the same order (node_exporter pairs the two by index
  to find each mount's ``addr=``), and ``self -> 1``.

Counter values differ per mount and lane so nothing compresses into a cache.
"""

from __future__ import annotations

import argparse
import random
import string
from pathlib import Path

NFS_OPS_V3 = (
    "NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE", "CREATE", "MKDIR",
    "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK", "READDIR", "READDIRPLUS", "FSSTAT",
    "FSINFO", "PATHCONF", "COMMIT",
)  # fmt: skip


def disk_name(i: int) -> str:
    """vda..vdz, then vdaa..vdzz like the kernel's virtio naming."""
    letters = string.ascii_lowercase
    if i < 26:
        return "vd" + letters[i]
    i -= 26
    return "vd" + letters[i // 26] + letters[i % 26]


def volume_uuid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def diskstats(disks: int, rng: random.Random) -> str:
    lines = []
    for i in range(disks):
        name = disk_name(i)
        for minor_off, dev in ((0, name), (1, name + "1")):
            nums = [rng.randrange(10**9) for _ in range(17)]
            nums[8] = rng.randrange(64)  # in-flight is a small gauge
            lines.append(f"{252:4d} {i * 16 + minor_off:7d} {dev} " + " ".join(map(str, nums)))
    return "\n".join(lines) + "\n"


def nfs_block(i: int, nconnect: int, rng: random.Random) -> str:
    vol = volume_uuid(i)
    r = rng.randrange
    out = [
        f"device nfs.example.com:/volumes/{vol} mounted on /mnt/vol{i} with fstype nfs statvers=1.1",
        "\topts:\trw,vers=3,rsize=1048576,wsize=1048576,namlen=255,acregmin=3,acregmax=60,acdirmin=30,"
        f"acdirmax=60,hard,forcerdirplus,proto=tcp,nconnect={nconnect},timeo=600,retrans=2,sec=sys,"
        "mountaddr=10.0.0.1,mountvers=3,mountport=0,mountproto=tcp,local_lock=none",
        f"\tage:\t{r(10**6)}",
        "\tcaps:\tcaps=0xf,wtmult=4096,dtsize=131072,bsize=0,namlen=255",
        "\tsec:\tflavor=1,pseudoflavor=1",
        "\tevents:\t" + " ".join(str(r(10**6)) for _ in range(27)) + " ",
        "\tbytes:\t" + " ".join(str(r(10**12)) for _ in range(8)) + " ",
        "\tRPC iostats version: 1.1  p/v: 100003/3 (nfs)",
    ]
    for _ in range(nconnect):
        sends = r(10**7)
        out.append(
            f"\txprt:\ttcp {r(1024)} 1 2 0 {r(100)} {sends} {sends} 0 {r(10**8)} {r(1000)} {r(2, 128)} "
            f"{r(10**6)} {r(10**6)}"
        )
    out.append("\tper-op statistics")
    for op in NFS_OPS_V3:
        ops = r(10**7)
        out.append(
            f"\t{op:>12}: {ops} {ops} 0 {r(10**10)} {r(10**12)} {r(10**5)} {r(10**7)} {r(10**7)} 0"
        )
    return "\n".join(out) + "\n"


def mountinfo_and_mounts(disks: int, mounts: int) -> tuple[str, str]:
    info = ["20 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"]
    plain = ["/dev/vda / ext4 rw,relatime 0 0"]
    for i in range(1, disks):
        name = disk_name(i)
        info.append(f"{20 + i} 20 252:{i * 16 + 1} / /data/{name} rw,relatime shared:{i + 1} - ext4 /dev/{name}1 rw")
        plain.append(f"/dev/{name}1 /data/{name} ext4 rw,relatime 0 0")
    for i in range(mounts):
        vol = volume_uuid(i)
        opts = "rw,vers=3,rsize=1048576,wsize=1048576,hard,proto=tcp,nconnect=16,addr=10.0.0.1"
        info.append(
            f"{1000 + i} 20 0:{100 + i} /volumes/{vol} /mnt/vol{i} rw,relatime shared:{1000 + i} - nfs "
            f"nfs.example.com:/volumes/{vol} {opts}"
        )
        plain.append(f"nfs.example.com:/volumes/{vol} /mnt/vol{i} nfs {opts} 0 0")
    return "\n".join(info) + "\n", "\n".join(plain) + "\n"


def mountstats(disks: int, mounts: int, nconnect: int, rng: random.Random) -> str:
    # Same order as mountinfo: node_exporter relies on it.
    parts = ["device /dev/vda mounted on / with fstype ext4\n"]
    for i in range(1, disks):
        name = disk_name(i)
        parts.append(f"device /dev/{name}1 mounted on /data/{name} with fstype ext4\n")
    parts.extend(nfs_block(i, nconnect, rng) + "\n" for i in range(mounts))
    return "".join(parts)


def generate(root: Path, disks: int, mounts: int, nconnect: int, seed: int = 1) -> Path:
    rng = random.Random(seed)
    pid1 = root / "1"
    pid1.mkdir(parents=True, exist_ok=True)
    (root / "diskstats").write_text(diskstats(disks, rng))
    info, plain = mountinfo_and_mounts(disks, mounts)
    (pid1 / "mountinfo").write_text(info)
    (pid1 / "mounts").write_text(plain)
    (pid1 / "mountstats").write_text(mountstats(disks, mounts, nconnect, rng))
    # disk_usage calls statfs on 1/root/<mount point>: real directories
    # (on whatever file system holds the tree) make every call succeed.
    for i in range(1, disks):
        (pid1 / "root" / "data" / disk_name(i)).mkdir(parents=True, exist_ok=True)
    (pid1 / "root").mkdir(exist_ok=True)
    self_link = root / "self"
    if not self_link.is_symlink():
        self_link.symlink_to("1")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--disks", type=int, default=64)
    ap.add_argument("--mounts", type=int, default=256)
    ap.add_argument("--nconnect", type=int, default=16)
    args = ap.parse_args()
    generate(args.root, args.disks, args.mounts, args.nconnect)
    print(args.root)


if __name__ == "__main__":
    main()
