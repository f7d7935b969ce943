"""The object-store endpoint derived from the Kubernetes node name, as the Go exporter does.

Crusoe node names carry the region as their second dot-separated part
(``np-88fe80e2-1.us-west1-a.compute.internal`` is in ``us-west1-a``); the
region's object store is ``object.<region>.crusoecloudcompute.com``. The Go
exporter took any second part; here it must also be a DNS label, so a stray
node name cannot produce an endpoint name no resolver would accept.
"""

from __future__ import annotations

import re

#: A DNS label (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class NoRegion(ValueError):
    """The node name does not carry a region; the message says why (it reads after the name)."""


def region_from_node_name(node_name: str) -> str:
    """The region in ``node_name`` (lower case); raises NoRegion."""
    name = node_name.strip()
    if not name:
        raise NoRegion("is empty")
    parts = name.split(".", 2)
    if len(parts) < 2 or not parts[1]:
        raise NoRegion("has no region: expected <node>.<region>[.<domain>]")
    region = parts[1].lower()
    if not _LABEL.fullmatch(region):
        raise NoRegion(f"has no region: its second part {parts[1]!r} is not a DNS label")
    return region


def objstore_endpoint(region: str) -> str:
    return f"object.{region}.crusoecloudcompute.com"
