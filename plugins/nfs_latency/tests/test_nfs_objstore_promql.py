"""The seed README's PromQL for NFS and the object store, answered by a real Prometheus.

The exporter runs as its own process (``crusoe-metrics-exporter serve``) with
both eBPF plugins; Prometheus (Debian package) scrapes it every second;
a delay server on 127.0.0.1:2049 and a moto S3 server provide the traffic.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.delay_server import delay_server, run_client
from helpers.exporter_scrape import ebpf_unavailable, fake_proc
from helpers.moto_s3 import moto_s3
from helpers.prometheus_server import PROMETHEUS, Prometheus, prometheus
from helpers.server import running_exporter

pytestmark = [pytest.mark.ebpf, pytest.mark.slow]

REASON = ebpf_unavailable() or (None if Path(PROMETHEUS).exists() else "prometheus is not installed")
if REASON:
    pytest.skip(f"!!! SKIPPING PromQL end-to-end test: {REASON} !!!", allow_module_level=True)

NFS_AVG = "rate(crusoe_vm_nfs_latency_seconds[5m]) / rate(crusoe_vm_nfs_requests_total[5m])"
NFS_RETRANS = "rate(crusoe_vm_nfs_tcp_retransmits_total[5m])"
OBJ_AVG = (
    "rate(crusoe_vm_objectstore_connection_latency_seconds[5m])"
    " / rate(crusoe_vm_objectstore_connections_total[5m])"
)
OBJ_RETRANS = "rate(crusoe_vm_objectstore_tcp_retransmits_total[5m])"


def wait_for(prom: Prometheus, promql: str, timeout: float = 30.0) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        result = prom.query(promql)
        if result and all(r["value"][1] not in ("NaN", "+Inf") for r in result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql!r} returned no data in {timeout}s: {result}")
        time.sleep(0.5)


def test_seed_promql_returns_data(tmp_path: Path) -> None:
    import boto3

    with moto_s3("127.0.0.1") as s3:
        env = {
            "NFS_SERVER_IPS": "127.0.0.1",
            "OBJSTORE_ENDPOINT_IPS": "127.0.0.1",
            "OBJSTORE_ENDPOINT_PORT": str(s3.port),
            "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
            "CRUSOE_EXPORTER_ENABLE": "nfs_latency,objstore",
        }
        # idle_series: the counters exist at zero before the first request, so rate() sees the first burst whole
        # (without it a series starts with its first request, and rate() misses what that first scrape counted).
        idle = ("--set", "plugins.nfs_latency.idle_series=true", "--set", "plugins.objstore.idle_series=true")
        with running_exporter(env, idle) as exporter, prometheus(f"127.0.0.1:{exporter.port}", tmp_path) as prom:
            wait_for(prom, 'up{job="exporter"} == 1')
            wait_for(prom, "crusoe_vm_nfs_requests_total")  # a first sample before the traffic
            client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
            client.create_bucket(Bucket="promql")
            with delay_server("127.0.0.1", 2049, 0.005):
                for i in range(3):
                    run_client("127.0.0.1", 2049, 10)
                    client.put_object(Bucket="promql", Key=f"k{i}", Body=b"x" * 65536)
                    client.get_object(Bucket="promql", Key=f"k{i}")["Body"].read()
                    time.sleep(1.0)
            client.close()

            nfs = wait_for(prom, NFS_AVG)
            assert [r["metric"]["volume_id"] for r in nfs] == ["unknown"]
            assert 0.005 <= float(nfs[0]["value"][1]) < 0.05
            assert wait_for(prom, NFS_RETRANS)[0]["metric"]["volume_id"] == "unknown"
            obj = wait_for(prom, OBJ_AVG)
            assert [r["metric"]["endpoint"] for r in obj] == ["127.0.0.1"]
            assert 0 < float(obj[0]["value"][1]) < 5
            assert wait_for(prom, OBJ_RETRANS)[0]["metric"]["endpoint"] == "127.0.0.1"
            sent = wait_for(prom, "crusoe_vm_objectstore_bytes_sent_total")
            assert float(sent[0]["value"][1]) >= 3 * 65536
