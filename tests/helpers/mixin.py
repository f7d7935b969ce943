"""The monitoring mixin's queries, for the tests that run them on a real Prometheus.

Most of them are answered by an exporter on the test machine
(tests/deploy/test_mixin_live.py). The per-RPC NFS families exist only where
the kernel has an NFS client, which this machine's kernel has not: queries
that read them are answered over scrapes recorded in the test guest instead
(plugins/nfs_latency/tests/test_rpc_promql.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MIXIN = Path(__file__).resolve().parents[2] / "deploy" / "mixin"
#: The per-RPC histograms of nfs_latency's RPC-layer source.
NFS_CLIENT_FAMILIES = re.compile(r"\bcrusoe_vm_nfs_rpc_(?:rtt|execute|queue)_seconds_(?:bucket|count|sum)\b")


def recording_rules() -> list[tuple[str, str, str]]:
    """(where, record, expr) of every recording rule."""
    groups = yaml.safe_load((MIXIN / "recording.yaml").read_text())["groups"]
    return [(f"recording rule {r['record']}", r["record"], r["expr"]) for g in groups for r in g["rules"]
            if "record" in r]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable, with the variables set to All."""
    board = json.loads((MIXIN / "dashboards" / "crusoe-metrics-exporter.json").read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$(instance|device|volume|endpoint)\b", ".*", target["expr"])
            out.append((f"panel {panel['title']!r} {target['refId']}", expr))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
        assert m, variable["query"]
        selector = re.sub(r"\$instance\b", ".*", m.group(1))
        out.append((f"variable {variable['name']}", f"group by ({m.group(2)}) ({selector})"))
    return out


def needs_nfs_client(promql: str) -> bool:
    """Whether the query reads the per-RPC NFS families, directly or through a recording rule."""
    if NFS_CLIENT_FAMILIES.search(promql):
        return True
    derived = [record for _, record, expr in recording_rules() if NFS_CLIENT_FAMILIES.search(expr)]
    return any(re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", promql) for record in derived)


def queries(nfs_client: bool) -> dict[str, str]:
    """where -> PromQL of every recording rule (queried by its name) and dashboard query that does (``True``)
    or does not (``False``) need the per-RPC NFS families."""
    out = {where: record for where, record, expr in recording_rules() if needs_nfs_client(expr) == nfs_client}
    out.update({where: q for where, q in dashboard_queries() if needs_nfs_client(q) == nfs_client})
    return out
