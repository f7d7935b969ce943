"""The monitoring mixin's queries, for the tests that run them on a real Prometheus.

Most of them are answered by an exporter on the test machine
(tests/deploy/test_mixin_live.py; nfs_latency there is TCP-level). The
per-RPC NFS families, and nfs_latency's families as they are once it traces
the RPC layer, exist only where the kernel has an NFS client, which this
machine's kernel has not: queries that read them are answered over scrapes
recorded in the test guest instead (plugins/nfs_latency/tests/test_rpc_promql.py).

Alerts are checked without their thresholds (:func:`matching_part`): what
remains returns a series wherever the expression's label matching finds
one, firing or not; an empty answer over series the exporter serves means
the alert can never fire.
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


#: A comparison with a number: an alert's threshold (``> 0.01``, ``== 0``).
_THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9][0-9.]*(?:e[+-]?[0-9]+)?(?![\w.])")
_FAMILY = re.compile(r"(?<![\w:])crusoe_vm_[a-zA-Z0-9_]+(?![\w:])")


def alert_rules() -> list[tuple[str, str]]:
    """(alert, expr) of every alert."""
    groups = yaml.safe_load((MIXIN / "alerts.yaml").read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"] if "alert" in r]


def matching_part(expr: str) -> str:
    """The alert's expression without its thresholds: its series wherever the label matching finds them."""
    return _THRESHOLD.sub("", expr)


def families(promql: str) -> set[str]:
    """The exporter's metric families a query reads, through recording rules too (histogram parts as the family)."""
    out: set[str] = set()
    for _, record, expr in recording_rules():
        pattern = rf"(?<![\w:]){re.escape(record)}(?![\w:])"
        if re.search(pattern, promql):
            out |= families(expr)
            promql = re.sub(pattern, "", promql)
    return out | {re.sub(r"_(?:bucket|count|sum)$", "", name) for name in _FAMILY.findall(promql)}


def alert_queries(served: set[str] | None = None, nfs_client: bool = False) -> dict[str, str]:
    """where -> the threshold-free expression of every alert that reads only ``served`` families (all when
    None) and does (``nfs_client``) or does not need the per-RPC NFS families."""
    def wanted(expr: str) -> bool:
        read = families(expr)
        return needs_nfs_client(expr) == nfs_client and (served is None or (bool(read) and read <= served))

    return {f"alert {name}": matching_part(expr) for name, expr in alert_rules() if wanted(expr)}


def needs_nfs_client(promql: str) -> bool:
    """Whether the query reads the per-RPC NFS families, directly or through a recording rule."""
    if NFS_CLIENT_FAMILIES.search(promql):
        return True
    derived = [record for _, record, expr in recording_rules() if NFS_CLIENT_FAMILIES.search(expr)]
    return any(re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", promql) for record in derived)


def queries(nfs_client: bool, served: set[str] | None = None) -> dict[str, str]:
    """where -> PromQL of every recording rule (queried by its name) and dashboard query that does (``True``)
    or does not (``False``) need the per-RPC NFS families and reads only ``served`` families (all when None)."""
    def wanted(promql: str) -> bool:
        return needs_nfs_client(promql) == nfs_client and (served is None or families(promql) <= served)

    out = {where: record for where, record, expr in recording_rules() if wanted(expr)}
    out.update({where: q for where, q in dashboard_queries() if wanted(q)})
    return out
