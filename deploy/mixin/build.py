#!/usr/bin/env python3
"""Generate the mixin's derived files from their sources in this directory.

    python3 deploy/mixin/build.py [--check]

* ``dashboards/crusoe-metrics-exporter.json``: the Grafana dashboard, from
  the panel list below (one place to read every query);
* ``deploy/kubernetes/overlays/prometheus-operator/prometheusrule.yaml``: the
  PrometheusRule carrying ``alerts.yaml`` and ``recording.yaml`` unchanged.

``--check`` exits 1 when a committed file differs from what would be
generated (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DASHBOARD = HERE / "dashboards" / "crusoe-metrics-exporter.json"
PROMETHEUS_RULE = REPO / "deploy" / "kubernetes" / "overlays" / "prometheus-operator" / "prometheusrule.yaml"
RULE_FILES = (HERE / "recording.yaml", HERE / "alerts.yaml")

I = 'instance=~"$instance"'  # noqa: E741 - the selector every panel starts with
V = 'volume_id=~"$volume"'
V_SHARED = 'volume_id=~"(.*[+])?$volume([+].*)?"'
D = 'device=~"$device"'

#: (row title, [(panel title, unit, [(expr, legend)])]).
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Exporter", [
        ("Plugin state", "none", [
            (f"crusoe_vm_exporter_plugin_state{{{I}}} == 1", "{{instance}} {{plugin}} {{state}}")]),
        ("Collect duration per plugin", "s", [
            (f"crusoe_vm_exporter_plugin_collect_duration_seconds{{{I}}}", "{{instance}} {{plugin}}")]),
        ("Plugin errors", "ops", [
            (f"sum by (instance, plugin, phase) (rate(crusoe_vm_exporter_plugin_errors_total{{{I}}}[5m]))",
             "{{instance}} {{plugin}} {{phase}}")]),
        ("eBPF programs attached", "none", [
            (f"crusoe_vm_exporter_ebpf_program_attached{{{I}}}", "{{instance}} {{plugin}}/{{program}} {{method}}")]),
    ]),
    ("Disks", [
        ("Read latency p99 / p50", "s", [
            (f'instance_device:crusoe_vm_disk_read_latency_seconds:p99_rate5m{{{I}, {D}}}',
             "p99 {{instance}} {{device}}"),
            (f'instance_device:crusoe_vm_disk_read_latency_seconds:p50_rate5m{{{I}, {D}}}',
             "p50 {{instance}} {{device}}")]),
        ("Write latency p99 / p50", "s", [
            (f'instance_device:crusoe_vm_disk_write_latency_seconds:p99_rate5m{{{I}, {D}}}',
             "p99 {{instance}} {{device}}"),
            (f'instance_device:crusoe_vm_disk_write_latency_seconds:p50_rate5m{{{I}, {D}}}',
             "p50 {{instance}} {{device}}")]),
        ("IOPS", "iops", [
            (f'rate(crusoe_vm_disk_reads_completed_total{{{I}, {D}}}[5m])', "read {{instance}} {{device}}"),
            (f'rate(crusoe_vm_disk_writes_completed_total{{{I}, {D}}}[5m])',
             "write {{instance}} {{device}}")]),
        ("Throughput", "Bps", [
            (f'rate(crusoe_vm_disk_read_bytes_total{{{I}, {D}}}[5m])', "read {{instance}} {{device}}"),
            (f'rate(crusoe_vm_disk_write_bytes_total{{{I}, {D}}}[5m])', "write {{instance}} {{device}}")]),
        ("Filesystem space used", "percentunit", [
            (f'instance_mountpoint:crusoe_vm_disk_bytes_used:ratio{{{I}, {D}}}',
             "{{instance}} {{mount_point}}")]),
        ("Filesystem inodes used", "percentunit", [
            (f'instance_mountpoint:crusoe_vm_disk_inodes_used:ratio{{{I}, {D}}}',
             "{{instance}} {{mount_point}}")]),
        ("Stuck mounts", "none", [
            (f'crusoe_vm_disk_mount_stuck{{{I}, {D}}}', "{{instance}} {{mount_point}}")]),
    ]),
    ("NFS", [
        ("Request latency p99 (RPC layer where traced, else TCP level)", "s", [
            (f'instance_volume_id:crusoe_vm_nfs_latency_histogram_seconds:p99_rate5m{{{I}, {V}}}',
             "{{instance}} {{volume_id}}")]),
        ("RPC latency p99 per operation (RPC layer)", "s", [
            (f'instance_volume_id_nfs_operation:crusoe_vm_nfs_rpc_execute_seconds:p99_rate5m{{{I}, {V}}}',
             "execute {{instance}} {{volume_id}} {{nfs_operation}}"),
            (f'instance_volume_id_nfs_operation:crusoe_vm_nfs_rpc_rtt_seconds:p99_rate5m{{{I}, {V}}}',
             "rtt {{instance}} {{volume_id}} {{nfs_operation}}")]),
        ("Requests", "reqps", [
            (f'sum by (instance, volume_id) (rate(crusoe_vm_nfs_requests_total{{{I}, {V}}}[5m]))',
             "{{instance}} {{volume_id}}")]),
        # A server address's series is labelled with all its volumes ("vol-a+vol-b"): a chosen volume
        # selects every server it is on.
        ("TCP retransmits per server address (volume_id: its volumes)", "ops", [
            (f'sum by (instance, volume_id) (rate(crusoe_vm_nfs_tcp_retransmits_total{{{I}, {V_SHARED}}}[5m]))',
             "{{instance}} {{volume_id}}")]),
        ("RPC mean round trip and execute time, every operation (nfs_stats, mountstats)", "s", [
            (f'instance_volume_id:crusoe_vm_nfs_rpc_rtt_ms:mean_seconds_rate5m{{{I}, {V}}}',
             "mean rtt {{instance}} {{volume_id}}"),
            (f'instance_volume_id:crusoe_vm_nfs_rpc_exe_ms:mean_seconds_rate5m{{{I}, {V}}}',
             "mean execute {{instance}} {{volume_id}}")]),
        ("RPC operations and timeouts", "ops", [
            (f'sum by (instance, volume_id, nfs_operation) (rate(crusoe_vm_nfs_rpc_count_total{{{I}, {V}}}[5m]))',
             "{{instance}} {{volume_id}} {{nfs_operation}}"),
            (f'sum by (instance, volume_id) (rate(crusoe_vm_nfs_rpc_timeouts_total{{{I}, {V}}}[5m]))',
             "timeouts {{instance}} {{volume_id}}")]),
    ]),
    ("Object store", [
        ("Connection-phase latency p99", "s", [
            ("instance_endpoint:crusoe_vm_objectstore_connection_latency_histogram_seconds:p99_rate5m"
             f'{{{I}, endpoint=~"$endpoint"}}', "{{instance}} {{endpoint}}")]),
        ("Bytes", "Bps", [
            (f'rate(crusoe_vm_objectstore_bytes_sent_total{{{I}, endpoint=~"$endpoint"}}[5m])',
             "sent {{instance}} {{endpoint}}"),
            (f'rate(crusoe_vm_objectstore_bytes_recv_total{{{I}, endpoint=~"$endpoint"}}[5m])',
             "received {{instance}} {{endpoint}}")]),
        ("Connection phases and retransmits", "ops", [
            (f'rate(crusoe_vm_objectstore_connections_total{{{I}, endpoint=~"$endpoint"}}[5m])',
             "phases {{instance}} {{endpoint}}"),
            (f'rate(crusoe_vm_objectstore_tcp_retransmits_total{{{I}, endpoint=~"$endpoint"}}[5m])',
             "retransmits {{instance}} {{endpoint}}")]),
    ]),
    ("Probes", [
        ("Probe success", "none", [
            (f'crusoe_vm_probe_success{{{I}, endpoint=~"$endpoint"}}',
             "{{instance}} {{probe}} {{endpoint}}:{{port}}")]),
        ("Probe duration", "s", [
            (f'crusoe_vm_probe_duration_seconds{{{I}, endpoint=~"$endpoint"}}',
             "{{instance}} {{probe}} {{endpoint}}:{{port}}")]),
    ]),
]

#: (name, label, query) of the dashboard's variables; each offers All (.*).
VARIABLES = (
    ("instance", "instance", "label_values(crusoe_vm_exporter_build_info, instance)"),
    ("device", "device",
     'label_values({__name__=~"crusoe_vm_disk_reads_completed_total|crusoe_vm_disk_bytes_total", '
     'instance=~"$instance"}, device)'),
    ("volume", "volume_id",
     'label_values({__name__=~"crusoe_vm_nfs_requests_total|crusoe_vm_nfs_rpc_count_total", '
     'instance=~"$instance"}, volume_id)'),
    ("endpoint", "endpoint",
     'label_values({__name__=~"crusoe_vm_objectstore_connections_total|crusoe_vm_probe_success", '
     'instance=~"$instance"}, endpoint)'),
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row_panels in ROWS:
        panels.append({"type": "row", "title": row_title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        for i, (title, unit, targets) in enumerate(row_panels):
            panels.append({
                "type": "timeseries",
                "title": title,
                "id": next_id,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
                "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                             "refId": chr(ord("A") + j)} for j, (expr, legend) in enumerate(targets)],
            })
            next_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    templating = [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"}]
    for name, label, query in VARIABLES:
        templating.append({
            "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
            "refresh": 2, "includeAll": True, "allValue": ".*", "multi": True, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        })
    return {
        "title": "crusoe-metrics-exporter",
        "uid": "crusoe-metrics-exporter",
        "description": "Disk, NFS and object-store behaviour per VM (crusoe-metrics-exporter mixin).",
        "tags": ["crusoe-metrics-exporter"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "",
        "templating": {"list": templating},
        "annotations": {"list": []},
        "panels": panels,
    }


def prometheus_rule() -> str:
    groups = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "crusoe-metrics-exporter",
                     "labels": {"app.kubernetes.io/component": "exporter"}},
        "spec": {"groups": groups},
    }
    header = ("# Generated by deploy/mixin/build.py from deploy/mixin/recording.yaml and alerts.yaml;\n"
              "# edit those and re-run it.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=200)


def outputs() -> dict[Path, str]:
    return {
        DASHBOARD: json.dumps(dashboard(), indent=2) + "\n",
        PROMETHEUS_RULE: prometheus_rule(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated file is stale")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(REPO)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale (run deploy/mixin/build.py): {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
