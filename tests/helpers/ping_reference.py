"""Round trips as iputils ``ping`` reports them: the independent reference for ICMP latency.

ping stamps its request in user space right before ``sendmsg`` and takes the
reply's arrival from the kernel (SO_TIMESTAMP), so its figure is the network
round trip without its own wake-up time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence

_TIME = re.compile(r"\btime=([0-9.]+) ms\b")


def ping_unavailable() -> str | None:
    if shutil.which("ping") is None:
        return "iputils ping is not installed (scripts/setup-system.sh --test installs it)"
    return None


def ping_rtts(address: str, count: int, interval: float = 0.05, wrap: Sequence[str] = ()) -> list[float]:
    """Seconds per answered echo of ``ping -c count`` (run under ``wrap``, e.g. ``ip netns exec NS``)."""
    proc = subprocess.run([*wrap, "ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "2", address],
                          capture_output=True, text=True, timeout=count * (interval + 2) + 10, check=False)
    rtts = [float(m.group(1)) / 1000 for m in _TIME.finditer(proc.stdout)]
    if not rtts:
        raise RuntimeError(f"ping {address} got no answer: {proc.stdout}{proc.stderr}")
    return rtts
