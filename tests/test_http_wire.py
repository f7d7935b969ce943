"""Content negotiation as scrapers send it (the framing itself is tested against the real server)."""

from __future__ import annotations

from crusoe_metrics_exporter.web.wire import accepts

OPENMETRICS = "application/openmetrics-text"


def test_openmetrics_negotiation_honours_case_and_zero_quality() -> None:
    prometheus = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                  "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert accepts(prometheus, OPENMETRICS)
    assert accepts("Application/OpenMetrics-Text; version=1.0.0", OPENMETRICS)
    assert not accepts(None, OPENMETRICS) and not accepts("text/plain", OPENMETRICS)
    # q=0 means "not acceptable" (RFC 9110 12.4.2).
    assert not accepts("application/openmetrics-text;q=0, text/plain", OPENMETRICS)
    assert not accepts("application/openmetrics-text; q=0.000", OPENMETRICS)
    # A later entry for the same type can still accept it.
    assert accepts("application/openmetrics-text;q=0, application/openmetrics-text;version=1.0.0", OPENMETRICS)


def test_gzip_negotiation() -> None:
    assert accepts("gzip", "gzip") and accepts("deflate, GZIP;q=0.5", "gzip")
    for refused in (None, "", "identity", "gzip;q=0", "gzip; q=0.0, identity", "x-gzipped", "gzip;q=abc"):
        assert not accepts(refused, "gzip"), refused
