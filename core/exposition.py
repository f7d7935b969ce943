"""One scrape's metrics -> exposition bytes, in the text format or OpenMetrics.

Every metric the exporter serves - a plugin's, a shared service's, the
exporter's own - reaches this module the same way: as a declaration
(:class:`MetricSpec`) with samples the core has validated against it. Both
formats are written from that one model by :mod:`.textformat`; nothing
builds prometheus_client families, and no metric name is special-cased.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from crusoe_metrics_exporter.contract import MetricSpec, Sample
from crusoe_metrics_exporter.textformat import render_groups, render_groups_openmetrics

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Group = tuple[MetricSpec, Sequence[Sample]]


@dataclass
class Scrape:
    """What one scrape gathered: each declaration with its (validated) samples, in exposition order."""

    groups: list[Group] = field(default_factory=list)


def render(scrape: Scrape, openmetrics: bool = False) -> bytes:
    """The exposition of ``scrape`` (UTF-8), OpenMetrics 1.0 or the text format 0.0.4."""
    if openmetrics:
        return render_groups_openmetrics(scrape.groups).encode()
    return render_groups(scrape.groups).encode()


def render_for(scrape: Scrape, accept: str | None) -> tuple[bytes, str]:
    """The exposition a scraper's Accept header asks for, and its content type."""
    if wants_openmetrics(accept):
        return render(scrape, openmetrics=True), OPENMETRICS_CONTENT_TYPE
    return render(scrape), TEXT_CONTENT_TYPE


def wants_openmetrics(accept_header: str | None) -> bool:
    if not accept_header:
        return False
    for part in accept_header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    if float(value) > 0:
                        return True
                except ValueError:
                    pass
                break
        else:
            return True
    return False
