"""crusoe-metrics-exporter: a plugin-based Prometheus exporter for cloud VMs.

Plugins import from :mod:`crusoe_metrics_exporter.sdk` (the public, stable
plugin API) and test with :mod:`crusoe_metrics_exporter.testing`; every other
module of this package is internal.
"""

__version__ = "0.1.0"
