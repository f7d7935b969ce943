"""Parsing and checking of option values, from text (env, CLI) or TOML values.

Every failure raises :class:`SettingError` whose message is one line naming
where the value came from, the value, and what is accepted.
"""

from __future__ import annotations

import ipaddress
import math
import re
import threading
from decimal import Decimal
from typing import Any

from crusoe_metrics_exporter.contract import ConfigOption


class SettingError(ValueError):
    """A setting has a value the exporter cannot use."""


class _BadEntry(ValueError):
    """One entry of a list is refused; the message says which and why."""


# [0-9], not \d: \d also matches full-width and Arabic-Indic digits, which
# float() and int() accept, so "٩٥٠٠" became 9500.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
#: Numbers as text: ASCII digits only (int() and float() also take "9_500" and other scripts' digits).
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def parse_duration(text: str) -> float:
    """Parse a Go-style duration ("30s", "5m", "1h30m", "250ms") into seconds."""
    s = text.strip()
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(text)
    return total


def format_number(value: float) -> str:
    """A number as a person types it: a whole number in full (1048576, never 1.04858e+06), any other in plain
    decimal notation with the digits it needs (0.00005, 2.5), which every option type parses back.

    15 significant digits, all a double holds reliably: ``0.007 * 1000`` shows as 7, not 7.000000000000001.
    """
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    number = float(f"{number:.15g}")
    if number.is_integer():
        return str(int(number))
    return format(Decimal(repr(number)), "f")


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for display and ``config init``."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{format_number(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{format_number(seconds)}s"
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = ""
    if h:
        out += f"{h}h"
    if m:
        out += f"{m}m"
    if s or not out:
        out += f"{s}s"
    return out


_EXPECTED = {
    "str": "a string",
    "path": "a file system path",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "duration": "a duration such as 30s, 5m or 1h30m",
    "str_list": "a comma-separated list",
    "int_list": "a comma-separated list of integers",
    "port_list": "a comma-separated list of ports between 1 and 65535",
    "regex": "a valid regular expression",
    "hostname": "a host name or unicast IP address",
    "bind_address": "a host name or IP address of this host, or 0.0.0.0 or :: for every interface",
    "hostname_list": "a comma-separated list of host names or unicast IP addresses",
    "ip_list": "a comma-separated list of unicast IP addresses",
}


#: An int option without a declared maximum still stays within what a C long holds.
IMPLICIT_INT_LIMIT = 2**63 - 1


def accepted_range(option: ConfigOption) -> str:
    """The declared bounds as a person reads them ("from 1s to 1d", "at least 16"; "" when none)."""
    def show(value: float) -> str:
        return format_duration(value) if option.type == "duration" else format_number(value)

    if option.minimum is not None and option.maximum is not None:
        return f"from {show(option.minimum)} to {show(option.maximum)}"
    if option.minimum is not None:
        return f"at least {show(option.minimum)}"
    if option.maximum is not None:
        return f"at most {show(option.maximum)}"
    return ""


def expected(option: ConfigOption) -> str:
    if option.choices:
        return "one of " + ", ".join(option.choices)
    if option.name == "port":
        return "an integer port between 1 and 65535"
    bounds = accepted_range(option)
    if not bounds:
        return _EXPECTED[option.type]
    # "a duration such as 30s, 5m or 1h30m, from 1s to 24h"; "an integer from 1 to 64"
    return f"{_EXPECTED[option.type]}{',' if option.type == 'duration' else ''} {bounds}"


def parse_option(option: ConfigOption, raw: Any, origin: str) -> Any:
    """Convert ``raw`` (str from env/CLI, or a TOML value) to the option's type."""
    try:
        value = _convert(option, raw)
        if option.minimum is not None and value < option.minimum:
            raise ValueError
        if option.maximum is not None and value > option.maximum:
            raise ValueError
        if option.type == "int" and abs(value) > IMPLICIT_INT_LIMIT:
            raise ValueError
        if option.choices and option.type == "int" and str(value) not in option.choices:
            raise ValueError
    except (ValueError, TypeError, OverflowError, re.error) as exc:
        shown = raw if isinstance(raw, str) else repr(raw)
        which = f"{exc}; " if isinstance(exc, _BadEntry) else ""
        raise SettingError(f"invalid {origin}={shown!r}: {which}expected {expected(option)}") from None
    return value


def _convert(option: ConfigOption, raw: Any) -> Any:
    t = option.type
    if t in ("str", "path"):
        if not isinstance(raw, str):
            raise TypeError
        value: Any = raw.strip() if t == "path" else raw
        if option.choices and value.lower() not in option.choices:
            raise ValueError
        return value.lower() if option.choices else value
    if t in ("hostname", "bind_address", "hostname_list", "ip_list"):
        return _convert_hosts(t, raw)
    if t == "regex":
        if not isinstance(raw, str):
            raise TypeError
        re.compile(raw)
        return raw
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE:
            return True
        if isinstance(raw, str) and raw.strip().lower() in _FALSE:
            return False
        raise ValueError
    if t == "int":
        if isinstance(raw, bool):
            raise TypeError
        value = _int_text(raw) if isinstance(raw, str) else int(raw)
        if isinstance(raw, float) and raw != value:
            raise ValueError
        if option.name == "port" and not 1 <= value <= 65535:
            raise ValueError
        return value
    if t == "float":
        if isinstance(raw, bool):
            raise TypeError
        number = _float_text(raw) if isinstance(raw, str) else float(raw)
        if not math.isfinite(number):
            raise ValueError
        return number
    if t == "duration":
        if isinstance(raw, bool):
            raise TypeError
        if isinstance(raw, (int, float)):
            seconds = float(raw)
        else:
            seconds = parse_duration(str(raw))
        # inf/nan come from TOML floats; beyond TIMEOUT_MAX no timer or wait accepts it.
        if not 0 <= seconds <= threading.TIMEOUT_MAX:
            raise ValueError
        return seconds
    if t in ("str_list", "int_list", "port_list"):
        items: list[Any]
        if isinstance(raw, str):
            items = [part.strip() for part in raw.split(",") if part.strip()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            raise TypeError
        if t == "str_list":
            if not all(isinstance(i, str) for i in items):
                raise TypeError
            return [i.strip() for i in items if i.strip()]
        ints = [_int_text(i) if isinstance(i, str) else _strict_int(i) for i in items]
        if t == "port_list" and (not ints or any(not 1 <= p <= 65535 for p in ints)):
            raise ValueError
        return ints
    raise TypeError(t)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_host_name(text: str) -> bool:
    """RFC 1123 host name syntax (a trailing dot allowed)."""
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def host_problem(text: str, names: bool = True, bind: bool = False) -> str:
    """Why ``text`` cannot name one host ("" when it can): a unicast IP address, or (``names``) a host name.

    The one check of every host-valued type, single or list: a probe or filter target must be one host.
    ``bind`` (an address to listen on) also takes the unspecified address, which means every interface.
    """
    if is_ip(text):
        problem = not_unicast(text)
        if not problem or (bind and problem == UNSPECIFIED):
            return ""
        return f"{text!r} is {problem}, not one host's address"
    if names and is_host_name(text):
        return ""
    return f"{text!r} is not {'a host name or IP address' if names else 'an IP address'}"


def _convert_hosts(t: str, raw: Any) -> Any:
    if t in ("hostname", "bind_address"):
        if not isinstance(raw, str):
            raise TypeError
        value = raw.strip()
        problem = host_problem(value, bind=t == "bind_address") if value else ""
        if problem:
            raise _BadEntry(problem)
        return value
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, (list, tuple)) and all(isinstance(i, str) for i in raw):
        items = [i.strip() for i in raw if i.strip()]
    else:
        raise TypeError
    for item in items:
        problem = host_problem(item, names=t == "hostname_list")
        if problem:
            raise _BadEntry(f"entry {problem}")
    return items


UNSPECIFIED = "the unspecified address"


def not_unicast(text: str) -> str:
    """Why the IP address ``text`` cannot name one host ("" when it can): a probe or filter target must."""
    address = ipaddress.ip_address(text.strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return UNSPECIFIED
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address):
        if address == ipaddress.IPv4Address("255.255.255.255"):
            return "the broadcast address"
        if address in _THIS_NETWORK:
            return "in 0.0.0.0/8 (this network)"
        if address in _RESERVED:
            return "in the reserved 240.0.0.0/4"
    return ""


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_RESERVED = ipaddress.IPv4Network("240.0.0.0/4")


def _int_text(text: str) -> int:
    text = text.strip()
    if not _INT_TEXT.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _float_text(text: str) -> float:
    text = text.strip()
    if not _FLOAT_TEXT.fullmatch(text):
        raise ValueError(text)
    return float(text)


def _strict_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def to_toml_value(option: ConfigOption, value: Any) -> Any:
    """The value as it should be written into a TOML file."""
    if option.type == "duration":
        return format_duration(float(value))
    if isinstance(value, tuple):
        return list(value)
    return value


def to_text(option: ConfigOption, value: Any) -> str:
    """The value as a person would type it (``config show``)."""
    if option.type == "duration":
        return format_duration(float(value))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_number(value)
    return str(value)
