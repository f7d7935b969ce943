"""Every recording rule, dashboard query and alert evaluates on a real Prometheus scraping a real exporter.

The exporter (``serve``, root, every plugin) sees real traffic: direct I/O on
a loop device (disk_latency, disk_stats), request/reply exchanges with a
delay server on 127.0.0.1:2049 (nfs_latency, the NFS probes), S3 requests to
moto's server (objstore, the HTTP probe). One stand-in: this kernel has no
NFS client, so nfs_stats reads a real kernel mountstats sample
(nfs_stats/tests/data/mountstats_real_nconnect16.txt) whose READ/WRITE
counters the test advances every second, as a busy mount's would.

nfs_latency runs TCP-level here (no NFS client); the same checks over
nfs_latency tracing the RPC layer are in plugins/nfs_latency/tests/test_rpc_promql.py.
Alerts are evaluated without their thresholds (helpers.mixin.matching_part):
each must return series, i.e. its label matching works on what the exporter
serves, whether or not it would fire.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.delay_server import delay_server, run_client
from helpers.mixin import MIXIN, alert_queries, queries
from helpers.moto_s3 import moto_s3
from helpers.prometheus_server import PROMETHEUS, Prometheus, prometheus
from helpers.server import running_exporter

pytestmark = [pytest.mark.deploy, pytest.mark.ebpf, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MOUNTSTATS = REPO / "plugins" / "nfs_stats" / "tests" / "data" / "mountstats_real_nconnect16.txt"
PER_OP = re.compile(r"^(\s+(?:READ|WRITE): )(.*)$", re.MULTILINE)


def advance(text: str, step: int) -> str:
    """The sample with every READ/WRITE counter grown by ``step`` operations' worth (monotonic)."""

    def grow(m: re.Match[str]) -> str:
        ops, trans, timeouts, sent, recv, queue, rtt, exe, *rest = (int(v) for v in m.group(2).split())
        grown = [ops + 10 * step, trans + 10 * step, timeouts + step, sent + 1400 * step, recv + 4096 * step,
                 queue + 2 * step, rtt + 30 * step, exe + 35 * step, *rest]
        return m.group(1) + " ".join(map(str, grown))

    return PER_OP.sub(grow, text)


@pytest.fixture
def live_mountstats(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mountstats"
    original = MOUNTSTATS.read_text()
    path.write_text(original)
    stop = threading.Event()

    def run() -> None:
        step = 0
        while not stop.wait(1.0):
            step += 1
            tmp = path.with_suffix(".new")
            tmp.write_text(advance(original, step))
            tmp.rename(path)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(5)


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result)


def test_every_recording_rule_dashboard_query_and_alert_evaluates(require_ebpf: None, loop_device: str,
                                                               live_mountstats: Path,
                                                               tmp_path: Path) -> None:
    if not Path(PROMETHEUS).exists():
        pytest.skip("!!! DEPLOY TEST SKIPPED: prometheus is not installed !!!")
    import boto3

    with moto_s3("127.0.0.1") as s3, delay_server("127.0.0.1", 2049, 0.002):
        env = {
            "NFS_SERVER_IPS": "127.0.0.1",
            "OBJSTORE_ENDPOINT_IPS": "127.0.0.1",
            "OBJSTORE_ENDPOINT_PORT": str(s3.port),
            "MOUNTSTATS_PATH": str(live_mountstats),
            "PROBE_INTERVAL": "2s", "PROBE_JITTER": "0s", "PROBE_TIMEOUT": "1s",
        }
        args = ("--set", f"plugins.disk_latency.device_include=^{loop_device}$")
        # The job name the mixin's CrusoeExporterDown matches (the ServiceMonitor's).
        with running_exporter(env, args=args) as exporter, prometheus(
                f"127.0.0.1:{exporter.port}", tmp_path, rule_files=(MIXIN / "recording.yaml",),
                job_name="crusoe-metrics-exporter") as prom:
            client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
            client.create_bucket(Bucket="mixin")
            # The per-RPC NFS families need an NFS client: test_rpc_promql.py runs those queries.
            pending = queries(nfs_client=False)
            alerts = alert_queries(nfs_client=False)
            assert "alert CrusoeNfsTcpRetransmitsHigh" in alerts and len(alerts) >= 13, sorted(alerts)
            pending.update(alerts)
            deadline = time.monotonic() + 90
            round_ = 0
            while pending and time.monotonic() < deadline:
                round_ += 1
                subprocess.run(["dd", "if=/dev/zero", f"of=/dev/{loop_device}", "bs=4k", "count=64",
                                "oflag=direct", "status=none"], check=True, timeout=30)
                subprocess.run(["dd", f"if=/dev/{loop_device}", "of=/dev/null", "bs=4k", "count=64",
                                "iflag=direct", "status=none"], check=True, timeout=30)
                run_client("127.0.0.1", 2049, 5)
                client.put_object(Bucket="mixin", Key=f"k{round_}", Body=b"x" * 4096)
                client.get_object(Bucket="mixin", Key=f"k{round_}")["Body"].read()
                time.sleep(1.0)
                pending = {where: q for where, q in pending.items()
                           if not (_query(prom, q) if where.startswith("alert ") else has_data(_query(prom, q)))}
            client.close()
    assert not pending, "no data for:\n" + "\n".join(f"{w}: {q}" for w, q in sorted(pending.items()))


def _query(prom: Prometheus, promql: str) -> list[dict[str, Any]]:
    return prom.query(promql)
