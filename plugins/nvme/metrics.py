"""Metric declarations of the nvme plugin: the Go exporter's names, labels and help texts."""

from __future__ import annotations

from crusoe_metrics_exporter.sdk import MetricSpec

ERRORS = "nvme_collection_errors_total"
INFO = "nvme_info"
CRITICAL_WARNING = "nvme_smart_critical_warning"
MEDIA_ERRORS = "nvme_media_errors_total"
ERROR_LOG_ENTRIES = "nvme_error_log_entries_total"
PERCENTAGE_USED = "nvme_percentage_used"
AVAILABLE_SPARE = "nvme_available_spare"
POWER_ON_HOURS = "nvme_power_on_hours"
TEMPERATURE = "nvme_temperature_celsius"
UNSAFE_SHUTDOWNS = "nvme_unsafe_shutdowns_total"

_DEVICE = ("device", "serial")

METRICS: tuple[MetricSpec, ...] = (
    # A real cumulative counter here; the Go exporter exposed a per-scrape
    # gauge under this name (and said "per scrape" in its help).
    MetricSpec.errors(ERRORS, "Total number of errors encountered during NVMe SMART collection."),
    MetricSpec(INFO, "gauge", "NVMe controller identity; value is always 1, information is in the labels.",
               ("device", "serial", "model", "firmware_rev")),
    MetricSpec(CRITICAL_WARNING, "gauge",
               "NVMe SMART critical warning bit (0=clear, 1=set). Any value of 1 is a platform emergency.",
               ("device", "serial", "bit")),
    MetricSpec(MEDIA_ERRORS, "counter", "Uncorrectable media and data integrity errors reported by the NVMe drive.",
               _DEVICE),
    MetricSpec(ERROR_LOG_ENTRIES, "counter",
               "Number of error information log entries over the lifetime of the drive.", _DEVICE),
    MetricSpec(PERCENTAGE_USED, "gauge",
               "Vendor estimate of NVM subsystem life consumed (0\u2013255; 100 = rated endurance reached).", _DEVICE),
    MetricSpec(AVAILABLE_SPARE, "gauge", "Remaining spare capacity as a percentage of the original (0\u2013100).",
               _DEVICE),
    MetricSpec(POWER_ON_HOURS, "gauge",
               "Hours the NVMe controller has been powered on over its physical lifetime.", _DEVICE,
               legacy_name="the Go exporter's name in hours (not seconds), used as is by its dashboards"),
    # Beyond the Go exporter:
    MetricSpec(TEMPERATURE, "gauge",
               "Composite temperature of the NVMe controller in degrees Celsius (the SMART log's kelvin - 273.15).",
               _DEVICE),
    MetricSpec(UNSAFE_SHUTDOWNS, "counter",
               "Unsafe shutdowns (power lost without a shutdown notification) over the lifetime of the controller.",
               _DEVICE),
)
