"""`collect` on this machine prints every host-health family of the Go exporter (the NVMe ones: in the guest)."""

from __future__ import annotations

from helpers.seed_families import collect_and_check
from helpers.server import CLI


def test_collect_prints_the_seed_host_health_families() -> None:
    collect_and_check(CLI)
