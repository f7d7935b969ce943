"""Parsing ``/proc/<pid>/mounts`` for NFS mounts (pure functions over text).

The kernel writes ``device mount_point fstype options dump pass`` with space,
tab, newline and backslash in the first two fields escaped as octal
(``\\040``). Only ``nfs`` and ``nfs4`` lines matter here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crusoe_metrics_exporter.targets.addresses import expand_ipv4_range, normalize

NFS_FSTYPES = frozenset({"nfs", "nfs4"})

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountLine:
    device: str
    mount_point: str
    fstype: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class RemotePorts:
    """The vendor ``remoteports=`` option (multipath NFS clients such as VAST's).

    ``dns`` means "every address the server name resolves to"; otherwise
    ``addresses`` are the literal addresses, ranges expanded. ``invalid``
    holds parts that were neither, for the caller to report.
    """

    dns: bool = False
    addresses: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()


def unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> tuple[list[MountLine], int]:
    """All well-formed lines and the number of malformed ones (fewer than 4 fields)."""
    lines: list[MountLine] = []
    malformed = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        fields = raw.split()
        if len(fields) < 4:
            malformed += 1
            continue
        lines.append(
            MountLine(
                device=unescape(fields[0]),
                mount_point=unescape(fields[1]),
                fstype=fields[2],
                options=tuple(o for o in fields[3].split(",") if o),
            )
        )
    return lines, malformed


def nfs_lines(lines: list[MountLine]) -> list[MountLine]:
    return [m for m in lines if m.fstype in NFS_FSTYPES]


def server_part(device: str) -> str:
    """The server of an NFS device: ``host:/export``, ``[v6]:/export``, ``10.0.0.1:/``.

    Returns "" when the device names no server.
    """
    if device.startswith("["):
        end = device.find("]")
        return device[1:end] if end > 1 else ""
    # ":/" first, so an unbracketed IPv6 server ("fd00::1:/export") is kept whole.
    idx = device.find(":/")
    if idx <= 0:
        idx = device.find(":")
    return device[:idx] if idx > 0 else ""


def option_value(options: tuple[str, ...], key: str) -> str | None:
    """The value of the first non-empty ``key=value`` option, like the kernel's first-wins."""
    prefix = key + "="
    for opt in options:
        if opt.startswith(prefix) and len(opt) > len(prefix):
            return opt[len(prefix) :]
    return None


def addr_options(options: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Normalized addresses of every ``addr=`` option, and values that are not IPs."""
    good: list[str] = []
    bad: list[str] = []
    for opt in options:
        if not opt.startswith("addr="):
            continue
        norm = normalize(opt[5:])
        if norm is None:
            bad.append(opt[5:])
        else:
            good.append(norm[0])
    return good, bad


def remote_ports(options: tuple[str, ...]) -> RemotePorts | None:
    """The parsed ``remoteports=`` option, or None when absent or empty.

    Accepted forms: ``dns``, a single address, an IPv4 range ``a-b``, and
    several of those joined by ``~``.
    """
    value = option_value(options, "remoteports")
    if value is None:
        return None
    if value.strip().lower() == "dns":
        return RemotePorts(dns=True)
    addresses: list[str] = []
    invalid: list[str] = []
    for raw_part in value.split("~"):
        part = raw_part.strip()
        if not part:
            continue
        norm = normalize(part)
        if norm is not None:
            addresses.append(norm[0])
            continue
        expanded = expand_ipv4_range(part)
        if expanded is None:
            invalid.append(part)
        else:
            addresses.extend(expanded)
    return RemotePorts(addresses=tuple(addresses), invalid=tuple(invalid))
