"""`collect` in the QEMU guest (Debian's 6.1 kernel) prints every host-health family of the Go exporter.

The NVMe families are checked against nvme-cli in plugins/nvme/tests/test_nvme_guest.py.
"""

from __future__ import annotations

import pytest
from helpers.seed_families import collect_and_check

pytestmark = pytest.mark.kernel_vm


def test_collect_prints_the_seed_host_health_families_in_the_guest() -> None:
    collect_and_check("crusoe-metrics-exporter")
