"""IP address text: recognising literals, normalizing them, expanding ranges."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: A ``remoteports=`` range may not expand to more addresses than this; the
#: seed's limit, and a guard against a typo turning into 16 million probes.
MAX_RANGE_ADDRESSES = 256


def parse_ip(text: str) -> IPAddress | None:
    """The address if ``text`` is an IP literal (IPv6 may be bracketed), else None."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    if not s:
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def normalize(text: str) -> tuple[str, int] | None:
    """``(canonical text, family 4|6)`` of an IP literal, or None."""
    ip = parse_ip(text)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is the IPv4 host; probing and labelling it as IPv6
        # would make one server appear twice.
        return str(ip.ipv4_mapped), 4
    return str(ip), ip.version


def family_of(address: str) -> int:
    """4 or 6 for normalized address text."""
    return 6 if ":" in address else 4


def sort_key(address: str) -> tuple[int, int, str]:
    """Numeric order, IPv4 first, so outputs are stable and readable."""
    ip = parse_ip(address)
    if ip is None:
        return (9, 0, address)
    return (ip.version, int(ip), address)


def expand_ipv4_range(text: str) -> list[str] | None:
    """Expand ``a.b.c.d-e.f.g.h`` (inclusive); None when it is not a valid, small range."""
    start_text, sep, end_text = text.partition("-")
    if not sep:
        return None
    start, end = parse_ip(start_text), parse_ip(end_text)
    if not isinstance(start, ipaddress.IPv4Address) or not isinstance(end, ipaddress.IPv4Address):
        return None
    first, last = int(start), int(end)
    if last < first or last - first >= MAX_RANGE_ADDRESSES:
        return None
    return [str(ipaddress.IPv4Address(n)) for n in range(first, last + 1)]
