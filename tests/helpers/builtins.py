"""The built-in plugins, from the one place that declares them: pyproject's entry-point group."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def builtin_plugins() -> set[str]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    return set(project["entry-points"]["crusoe_metrics_exporter"])


def plugin_folders() -> set[str]:
    """Folders under plugins/ that are plugins (shared private helpers start with an underscore)."""
    return {p.parent.name for p in (REPO / "plugins").glob("*/__init__.py") if not p.parent.name.startswith("_")}


def builtin_services() -> set[str]:
    """The shared services the exporter registers through the services entry-point group."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    return set(project["entry-points"]["crusoe_metrics_exporter.services"])
