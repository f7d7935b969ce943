"""objstore against a real S3 server (moto) on loopback, driven with boto3, with the real eBPF programs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers.exporter_scrape import ebpf_unavailable, fake_proc, labelsets, running, scrape, value
from helpers.moto_s3 import MotoS3, moto_s3
from helpers.tls_certs import make_pki

pytestmark = pytest.mark.ebpf

REASON = ebpf_unavailable()
if REASON:
    pytest.skip(f"!!! SKIPPING objstore eBPF traffic tests: {REASON} !!!", allow_module_level=True)

UPLOAD = 1024 * 1024 + 333
DOWNLOAD_OF = UPLOAD


def s3_client(server: MotoS3, verify: str | bool = False) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        verify=verify,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def exercise(server: MotoS3, verify: str | bool = False) -> int:
    """Create a bucket, upload UPLOAD bytes, download them; returns the requests made."""
    client = s3_client(server, verify)
    client.create_bucket(Bucket="bench")
    client.put_object(Bucket="bench", Key="blob", Body=os.urandom(UPLOAD))
    body = client.get_object(Bucket="bench", Key="blob")["Body"].read()
    assert len(body) == DOWNLOAD_OF
    client.close()  # closing finalizes the connection's last phase
    return 3


def check_counts(series: dict, endpoint: str, requests: int, overhead: int) -> None:  # type: ignore[type-arg]
    sent = value(series, "crusoe_vm_objectstore_bytes_sent_total", endpoint=endpoint)
    received = value(series, "crusoe_vm_objectstore_bytes_recv_total", endpoint=endpoint)
    assert UPLOAD <= sent <= UPLOAD + overhead, sent
    assert DOWNLOAD_OF <= received <= DOWNLOAD_OF + overhead, received
    phases = value(series, "crusoe_vm_objectstore_connections_total", endpoint=endpoint)
    assert phases >= requests
    count = value(series, "crusoe_vm_objectstore_connection_latency_histogram_seconds_count", endpoint=endpoint)
    assert count == phases
    latency = value(series, "crusoe_vm_objectstore_connection_latency_seconds", endpoint=endpoint)
    assert 0 < latency < 30
    # Present from the start; loopback under CPU pressure can see a tail-loss
    # probe, so no exact value here (the netns tests pin retransmits down).
    assert value(series, "crusoe_vm_objectstore_tcp_retransmits_total", endpoint=endpoint) >= 0


def env_for(server: MotoS3, tmp_path: Path) -> dict[str, str]:
    return {
        "OBJSTORE_ENDPOINT_IPS": server.host,
        "OBJSTORE_ENDPOINT_PORT": str(server.port),
        "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
    }


def test_http_upload_and_download_bytes_and_phases(tmp_path: Path) -> None:
    with moto_s3("127.0.0.1") as server, running(env_for(server, tmp_path), ["objstore"]) as exporter:
        before = scrape(exporter, ["objstore"])
        # No traffic yet, so no series (idle_series is off by default).
        assert labelsets(before, "crusoe_vm_objectstore_bytes_sent_total") == []
        requests = exercise(server)
        check_counts(scrape(exporter, ["objstore"]), "127.0.0.1", requests, overhead=16 * 1024)


def test_https_upload_and_download(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with moto_s3("127.0.0.1", pki) as server, running(env_for(server, tmp_path), ["objstore"]) as exporter:
        requests = exercise(server, verify=str(pki.ca_cert))
        # TLS adds the handshake and ~30 bytes per 16 KiB record.
        check_counts(scrape(exporter, ["objstore"]), "127.0.0.1", requests, overhead=48 * 1024)


def test_ipv6_endpoint(tmp_path: Path) -> None:
    with moto_s3("::1") as server, running(env_for(server, tmp_path), ["objstore"]) as exporter:
        requests = exercise(server)
        check_counts(scrape(exporter, ["objstore"]), "::1", requests, overhead=16 * 1024)


def test_fqdn_endpoint_resolved_by_discovery(tmp_path: Path) -> None:
    # "localhost" resolves from /etc/hosts, so no DNS traffic leaves the host.
    with moto_s3("127.0.0.1") as server:
        env = {
            "OBJSTORE_ENDPOINT_FQDN": "localhost",
            "OBJSTORE_ENDPOINT_PORT": str(server.port),
            "HOST_PROC_PATH": str(fake_proc(tmp_path / "proc")),
        }
        with running(env, ["objstore"]) as exporter:
            requests = exercise(server)
            check_counts(scrape(exporter, ["objstore"]), "127.0.0.1", requests, overhead=16 * 1024)
