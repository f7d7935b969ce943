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
from crusoe_metrics_exporter.textformat import LabelTexts, render_groups, render_groups_openmetrics

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Group = tuple[MetricSpec, Sequence[Sample]]


@dataclass
class Scrape:
    """What one scrape gathered: each declaration with its (validated) samples, in exposition order."""

    groups: list[Group] = field(default_factory=list)


def render(scrape: Scrape, openmetrics: bool = False, texts: LabelTexts | None = None) -> bytes:
    """The exposition of ``scrape`` (UTF-8), OpenMetrics 1.0 or the text format 0.0.4.

    ``texts``: label sets rendered by the previous call, reused where the
    series are the same (a server passes one for its lifetime).
    """
    if openmetrics:
        return render_groups_openmetrics(scrape.groups, texts).encode()
    return render_groups(scrape.groups, texts).encode()

