"""NVMe controllers as sysfs lists them, and the identity strings it holds for each.

``<sysfs>/class/nvme`` has one entry per controller (``nvme0``, ``nvme1``,
...) next to others that are not controllers (``nvme-fabrics`` when that
module is loaded); only ``nvme<N>`` names count, as in the Go exporter.
``serial``, ``model`` and ``firmware_rev`` are the Identify Controller
strings, space padded (older kernels keep the padding).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from crusoe_metrics_exporter.sdk import read_file

_CONTROLLER = re.compile(r"nvme\d+")
_DEV = re.compile(r"(\d+):(\d+)")
#: Identify Controller's SN, MN and FR are 20, 40 and 8 bytes; sysfs adds a newline.
_FIELD_LIMIT = 256
_SYSFS_PAGE = 4096


class Identity(NamedTuple):
    serial: str
    model: str
    firmware_rev: str


class Controller(NamedTuple):
    """One controller: its name, identity, device node and (major, minor) from sysfs."""

    name: str
    identity: Identity
    device: Path
    devnum: tuple[int, int] | None
    #: Why the identity or device number could not be read ("" when all was read).
    problem: str


def controller_names(sysfs: Path) -> list[str]:
    """Controller names under ``<sysfs>/class/nvme`` in numeric order; raises OSError."""
    names = [entry for entry in os.listdir(sysfs / "class" / "nvme") if _CONTROLLER.fullmatch(entry)]
    return sorted(names, key=lambda n: int(n[4:]))


def _text(path: Path) -> str:
    # A sysfs attribute is at most a page; the identity fields are far shorter.
    raw = read_file(path, _SYSFS_PAGE)[:_FIELD_LIMIT]
    # The specification says ASCII; anything else is shown as "?" rather
    # than carried into a label value.
    text = raw.decode("ascii", "replace").replace("\ufffd", "?")
    return "".join(c if c.isprintable() else "?" for c in text.strip(" \t\n\0"))


def read_controller(sysfs: Path, dev: Path, name: str) -> Controller:
    """Identity and device number of ``name``; what cannot be read is empty, and said in ``problem``."""
    base = sysfs / "class" / "nvme" / name
    values: list[str] = []
    problems: list[str] = []
    for field in Identity._fields:
        try:
            values.append(_text(base / field))
        except OSError as exc:
            values.append("")
            problems.append(f"{base / field}: {exc.strerror or exc}")
    devnum: tuple[int, int] | None = None
    try:
        match = _DEV.fullmatch(_text(base / "dev"))
        if match is None:
            problems.append(f"{base / 'dev'} is not MAJOR:MINOR")
        else:
            devnum = (int(match.group(1)), int(match.group(2)))
    except OSError as exc:
        problems.append(f"{base / 'dev'}: {exc.strerror or exc}")
    return Controller(name, Identity(*values), dev / name, devnum, "; ".join(problems))
