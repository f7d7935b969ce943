"""Fixtures shared by the target-discovery tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crusoe_metrics_exporter.targets.directory import TargetDirectory


@pytest.fixture
def directories() -> Iterator[list[TargetDirectory]]:
    """Directories a test made; each is stopped (thread joined, descriptors closed) afterwards."""
    made: list[TargetDirectory] = []
    yield made
    for d in made:
        d.stop()
