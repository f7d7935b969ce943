"""Network namespaces joined by a veth pair, with optional nftables packet loss.

Everything lives inside namespaces this helper creates (unique names,
private addresses), and is removed on exit even when the test fails.
Programs run inside a namespace with ``ip netns exec``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


def _run(*cmd: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, input=input_text, timeout=30)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if _run("which", tool, check=False).returncode != 0:
            return f"{tool} is not installed (scripts/setup-system.sh --test installs it)"
    return None


@dataclass(frozen=True)
class VethPair:
    """Two namespaces, ``client`` and ``server``, one veth link between them."""

    client: str
    server: str
    client_addr: str
    server_addr: str
    client_addr6: str
    server_addr6: str
    client_link: str = ""
    server_link: str = ""

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns: str, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(self.exec_argv(ns, argv), text=True, **kw)  # type: ignore[call-overload, no-any-return]

    def run(self, ns: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.exec_argv(ns, argv), capture_output=True, text=True, timeout=timeout, check=True)

    def drop_incoming(self, ns: str, percent: int, tcp_dport: int | None = None,
                      tcp_sport: int | None = None) -> None:
        """Drop ``percent`` % of matching incoming TCP packets in ``ns`` (nftables numgen random)."""
        if not 0 < percent <= 100:
            raise ValueError("percent must be in 1..100")
        match = ""
        if tcp_dport is not None:
            match += f" tcp dport {tcp_dport}"
        if tcp_sport is not None:
            match += f" tcp sport {tcp_sport}"
        sample = "" if percent == 100 else f" numgen random mod 100 < {percent}"
        table = f"loss{uuid.uuid4().hex[:6]}"
        rules = (
            f"table inet {table} {{\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    meta l4proto tcp{match}{sample} drop\n"
            "  }\n"
            "}\n"
        )
        _run("ip", "netns", "exec", ns, "nft", "-f", "-", input_text=rules)

    def drop_outgoing(self, ns: str, percent: int) -> None:
        """Drop ``percent`` % of what ``ns`` sends over the link (netem; for hosts without nftables)."""
        if not 0 < percent <= 100:
            raise ValueError("percent must be in 1..100")
        link = self.client_link if ns == self.client else self.server_link
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", link, "root", "netem", "loss", f"{percent}%")


@contextmanager
def veth_pair(prefix: str = "cme", *, offload: bool = False) -> Iterator[VethPair]:
    """Create two namespaces with a veth link (10.x/24 and fd00::/64 addresses).

    By default GSO/GRO are capped at one segment, so every segment is its own
    packet and a loss rate means what it says. ``offload=True`` keeps veth's
    TSO/GSO: the sender hands 64 KiB super-packets to the link, a drop loses
    a whole one, and a retransmitted skb carries several segments - the case
    that counts differ per skb and per segment.
    """
    tag = uuid.uuid4().hex[:6]
    client, server = f"{prefix}c{tag}", f"{prefix}s{tag}"
    link_c, link_s = f"vc{tag}", f"vs{tag}"
    octet = int(tag[:2], 16) % 200 + 20
    pair = VethPair(client, server, f"10.{octet}.77.1", f"10.{octet}.77.2",
                    f"fd00:{tag[:4]}::1", f"fd00:{tag[:4]}::2", link_c, link_s)
    created: list[str] = []
    try:
        for ns in (client, server):
            _run("ip", "netns", "add", ns)
            created.append(ns)
        _run("ip", "link", "add", link_c, "netns", client, "type", "veth", "peer", "name", link_s, "netns", server)
        for ns, link, addr, addr6 in ((client, link_c, pair.client_addr, pair.client_addr6),
                                      (server, link_s, pair.server_addr, pair.server_addr6)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", link)
            _run("ip", "-n", ns, "addr", "add", f"{addr6}/64", "dev", link, "nodad")
            if not offload:
                # Without GSO every segment is its own packet, so a loss rate
                # means what it says (veth otherwise passes 64 KiB super-packets).
                _run("ip", "-n", ns, "link", "set", link, "gso_max_size", "1500", "gro_max_size", "1500",
                     check=False)
            _run("ip", "-n", ns, "link", "set", link, "up")
        yield pair
    finally:
        for ns in created:
            _run("ip", "netns", "del", ns, check=False)
