"""Linux capabilities: which this process holds, and one wording for "exists but unreadable".

Run as a dedicated user (systemd) or in a container, the exporter holds a
few capabilities instead of being root. A host file or directory that exists
but is not readable then needs one precise answer: which capability is
missing and how to grant it in each artefact we ship. Plugins and the eBPF
runtime use :func:`unreadable` for that, so ``plugins``, ``doctor`` and ``/``
all say the same thing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import NamedTuple

from crusoe_metrics_exporter.files import read_text

#: Bit numbers from <linux/capability.h> of the capabilities the exporter's plugins may need.
NUMBERS: dict[str, int] = {
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_RAW": 13,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def effective() -> int:
    """This process's effective capability mask (0 when /proc/self/status cannot be read)."""
    try:
        for line in read_text("/proc/self/status").splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has(name: str) -> bool:
    """Whether the process holds capability ``name`` (``CAP_...``) in its effective set."""
    return bool(effective() >> NUMBERS[name] & 1)


def grant_hint(name: str) -> str:
    """How to grant ``name`` in each artefact the project ships."""
    short = name.removeprefix("CAP_")
    return (f"run as root, or grant {name} (systemd: AmbientCapabilities={name}; "
            f"Kubernetes: securityContext.capabilities.add: [{short}])")


class Unreadable(NamedTuple):
    reason: str
    fix: str


def unreadable(path: Path | str, exc: OSError, needs: str = "CAP_DAC_READ_SEARCH") -> Unreadable | None:
    """When ``exc`` means ``path`` exists but this process may not read it: the reason and the fix.

    None for any other failure (missing file, I/O error), which callers report
    as they always did. ``needs`` is the capability that lifts the denial:
    CAP_DAC_READ_SEARCH for file modes (tracefs is 0700, mountstats 0400),
    CAP_SYS_PTRACE for another process's ``/proc/PID/root``.
    """
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return None
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    held = "holding it" if has(needs) else "without it"
    return Unreadable(f"{path} is unreadable: needs {needs} (running as {who} {held})", grant_hint(needs))
