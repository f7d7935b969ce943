"""Options every eBPF plugin accepts (include ``EBPF_OPTIONS`` in a plugin's options)."""

from __future__ import annotations

from crusoe_metrics_exporter.contract import ConfigOption

EBPF_OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "ebpf_mount_tracefs",
        "bool",
        True,
        "Mount tracefs at /sys/kernel/tracing when it is not mounted (needs root); the eBPF programs attach "
        "through it.",
        env="CRUSOE_EXPORTER_MOUNT_TRACEFS",
    ),
    ConfigOption(
        "ebpf_state_dir",
        "path",
        "/var/lib/crusoe-metrics-exporter",
        "Directory the eBPF runtime owns; merged kernel-header trees are built here when the running kernel's "
        "own headers are not installed.",
        env="CRUSOE_EXPORTER_STATE_DIR",
    ),
)
