"""Record real nfs_latency scrapes in the test guest for the host's PromQL test (test_rpc_promql.py).

Run it in the guest (it needs a real NFS client and the RPC-layer program):

    python -m tests.vm run --keep -- python plugins/nfs_latency/tests/data/record_rpc_scrapes.py

It mounts two volumes of the guest's nfsd (NFSv4.2 and NFSv3, nconnect=4),
starts the exporter in-process with the default operations, and scrapes it
every 2 s while the volumes carry different workloads (one writes in 1 MiB
chunks, the other reads and stats). Each scrape's NFS families (nfs_latency's
per-RPC RTT and execute histograms and Go families, nfs_stats' per-op
mountstats counters; per-op series of four operations), byte for byte as
the exporter rendered them, go to ``$CME_GUEST_OUT/rpc_layer_scrapes/NN.prom``;
copy those to ``plugins/nfs_latency/tests/data/rpc_layer_scrapes/``. The two
volumes share one server address, as Crusoe's volumes do: the TCP program's
retransmit series carries both volume ids, the RPC layer's series one each.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests"))

from helpers.guest_nfs import NfsServer, drop_caches, mount_at, unmount  # noqa: E402

from crusoe_metrics_exporter.app import Exporter  # noqa: E402
from crusoe_metrics_exporter.exposition import render  # noqa: E402

PLUGINS = ["nfs_latency", "nfs_stats"]
#: The families of the two plugins the monitoring mixin reads (per-lane, per-mount event and queue-time
#: families left out to keep the files small) and the exporter's own per-plugin state.
FAMILY = re.compile(r"^(?:# (?:HELP|TYPE) )?crusoe_vm_(?:nfs_(?!xprt_|mount_|bytes_|rpc_backlog|rpc_queue_)"
                    r"|exporter_plugin_state)")
SCRAPES = 8
#: Operations kept in the files (the others are left out to keep them small).
OPERATIONS = ("read", "write", "commit", "lookup")
PER_OP = re.compile(r'nfs_operation="([^"]*)"')


def family_text(text: str) -> str:
    def keep(line: str) -> bool:
        op = PER_OP.search(line)
        return bool(FAMILY.match(line)) and (op is None or op.group(1) in OPERATIONS)

    return "\n".join(line for line in text.splitlines() if keep(line)) + "\n"


def main() -> int:
    out = Path(os.environ.get("CME_GUEST_OUT", "/tmp")) / "rpc_layer_scrapes"
    out.mkdir(parents=True, exist_ok=True)
    server = NfsServer()
    if Path("/proc/fs/nfsd/threads").exists() and server.threads() > 0:
        server.running = True  # a test session in this boot started nfsd; its settings cannot change now
    else:
        server.start()
    mounts = []
    for volume, version in (("7e57da7a-0001-4000-8000-0000000000a1", "4.2"),
                            ("7e57da7a-0002-4000-8000-0000000000b2", "3")):
        export = server.add_volume_fs(volume)
        server.write_exports()
        mounts.append(mount_at(server, export, version, Path(f"/mnt/record-v{version}")))
    writer, reader = mounts
    subprocess.run(["dd", "if=/dev/zero", f"of={reader.mountpoint}/data", "bs=1M", "count=8", "conv=fsync",
                    "status=none"], check=True, timeout=120)
    exporter = Exporter.from_environment(environ={})
    exporter.start(only=PLUGINS)
    stop = threading.Event()

    def write_loop() -> None:
        while not stop.is_set():
            subprocess.run(["dd", "if=/dev/zero", f"of={writer.mountpoint}/out", "bs=1M", "count=2", "conv=fsync",
                            "status=none"], check=True, timeout=120)

    def read_loop() -> None:
        while not stop.is_set():
            drop_caches()
            subprocess.run(["dd", f"if={reader.mountpoint}/data", "of=/dev/null", "bs=64k", "status=none"], check=True,
                           timeout=120)
            for i in range(10):
                with contextlib.suppress(FileNotFoundError):
                    os.stat(reader.mountpoint / f"missing-{time.monotonic_ns()}-{i}")

    threads = [threading.Thread(target=write_loop), threading.Thread(target=read_loop)]
    try:
        for t in threads:
            t.start()
        for n in range(SCRAPES):
            time.sleep(2.0)
            text = render(exporter.collect(only=PLUGINS)).decode()
            (out / f"{n:02d}.prom").write_text(family_text(text))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        exporter.stop()
        unmount(writer)
        unmount(reader)
    print(f"recorded {SCRAPES} scrapes in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
