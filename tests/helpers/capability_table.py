"""README "Capabilities" table, the systemd unit's and the DaemonSet's capability lists, read for comparison."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "crusoe-metrics-exporter.service"


@dataclass(frozen=True)
class Row:
    capability: str
    plugins: tuple[str, ...]
    in_unit: bool
    in_daemonset: bool
    #: Not granted by the shipped artefacts; an operator adds it to run its plugins.
    opt_in: bool


def readme_rows() -> list[Row]:
    text = (REPO / "README.md").read_text()
    section = text.split("<!-- capability table -->", 2)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`CAP_"):
            continue
        rows.append(Row(cells[0].strip("`"), tuple(re.findall(r"`([a-z_]+)`", cells[1])),
                        cells[3].startswith("yes"), cells[4].startswith("yes"),
                        "opt-in" in cells[3] and "opt-in" in cells[4]))
    return rows


def unit_setting(name: str, unit: Path = UNIT) -> list[str]:
    """Space-separated values of every ``name=`` line of the unit, in order."""
    values: list[str] = []
    for line in unit.read_text().splitlines():
        if line.startswith(f"{name}="):
            values += line.partition("=")[2].split()
    return values


def opt_in_plugins(rows: list[Row] | None = None) -> set[str]:
    """Plugins whose capability the shipped artefacts do not grant: unsupported until an operator opts in."""
    rows = readme_rows() if rows is None else rows
    granted = {p for r in rows if r.in_unit or r.in_daemonset for p in r.plugins}
    return {p for r in rows if r.opt_in for p in r.plugins} - granted


def opt_in_capabilities(plugin: str, rows: list[Row] | None = None) -> list[str]:
    rows = readme_rows() if rows is None else rows
    return [r.capability for r in rows if plugin in r.plugins and r.opt_in]
