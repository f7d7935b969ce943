"""Any value for any setting: a one-line error naming the setting, or a value inside its documented range.

The trial fed 108 nonsense values: 20 were accepted with only runtime
warnings and 15 silently (PORT=9_500 and other scripts' digits as 9500,
NFS_MOUNT_REFRESH_INTERVAL=1ns and 0 spinning a core, stat_workers=10**18,
an unbounded inflight_capacity, broadcast and multicast probe targets).
Here hypothesis draws values of every kind for every option of the core,
the shared services and the built-in plugins, from the environment, the
command line and the config file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crusoe_metrics_exporter import host
from crusoe_metrics_exporter.contract import ConfigOption
from crusoe_metrics_exporter.options import SettingError, is_host_name, is_ip, not_unicast
from crusoe_metrics_exporter.settings import _FLAGS, CORE_OPTIONS, Overrides, _cli_flag, resolve

PLUGINS = host.discover()
SERVICES = host.discover_services()
PLUGIN_OPTIONS = host.declared_options(PLUGINS)
SERVICE_OPTIONS = host.declared_options(SERVICES)
SECTIONS: dict[str, tuple[ConfigOption, ...]] = {
    "exporter": CORE_OPTIONS,
    **SERVICE_OPTIONS,
    **{f"plugins.{name}": options for name, options in PLUGIN_OPTIONS.items()},
}
EVERY = [(section, option) for section, options in SECTIONS.items() for option in options]
NUMERIC = ("int", "float", "duration")

DIGITS = "0123456789\uff10\uff15\uff19\u0660\u0669\u0966\u096f\U0001d7ce"  # ASCII, full-width, Arabic-Indic, ...
_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["0", "-1", "1", "9_500", "1e400", "-0", "00", "0x10", "1.5", "1e-9", "inf", "nan", "1ns",
                     "0s", "1us", "999999999h", "1e308s", "1.0000000001", "65536", "4294967296", str(10**18)]),
    st.text(alphabet=DIGITS + "_.-+e", min_size=1, max_size=12),
    st.builds(lambda n, u: f"{n}{u}", st.text(alphabet=DIGITS + ".", min_size=1, max_size=8),
              st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h", "d", ""])),
)
_garbage = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["0.0.0.0", "255.255.255.255", "224.0.0.1", "ff02::1", "::", "10.0.0.1,0.0.0.0", "a..b",
                     "[::1]", "-", ",", " , ", "true", "yes", "off", "\n", "x" * 300]),
)
TEXT = st.one_of(_numbers, _garbage).filter(lambda s: "\x00" not in s and s.strip() != "")
TOML_VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=20), st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=4),
    st.lists(st.text(max_size=8), max_size=4),
)


def _spelling(section: str, option: ConfigOption, source: str) -> str:
    if source == "env":
        assert option.env is not None
        return option.env
    if source == "cli":
        flagged = section == "exporter" and option.name in _FLAGS
        return _cli_flag(option.name) if flagged else f"--set {section}.{option.name}"
    return f"[{section}] {option.name}"


def _resolve(section: str, option: ConfigOption, source: str, raw: Any, tmp: Path) -> Any:
    env = {"HOST_PROC_PATH": "/proc"}
    overrides: dict[str, str] = {}
    config = None
    if source == "env":
        assert option.env is not None
        env[option.env] = raw
    elif source == "cli":
        overrides[f"{section}.{option.name}"] = raw
    else:
        import tomli_w

        table: dict[str, Any] = {option.name: raw}
        for part in reversed(section.split(".")):
            table = {part: table}
        config = tmp / "config.toml"
        config.write_text(tomli_w.dumps(table))
    found, _ = resolve(PLUGIN_OPTIONS, config, env, Overrides(overrides), service_options=SERVICE_OPTIONS)
    records: list[host.PluginRecord | host.ServiceRecord] = [*SERVICES, *PLUGINS]
    host.build_options(records, found)  # the options classes' own checks
    if section == "exporter":
        return found.core[option.name]
    if section.startswith("plugins."):
        return found.plugin(section.removeprefix("plugins."))[option.name]
    return found.service(section)[option.name]


def _check_in_range(option: ConfigOption, value: Any) -> None:
    if option.type in NUMERIC:
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert math.isfinite(value)
    if option.type in NUMERIC and not option.choices and option.name != "port":
        assert option.minimum is not None and option.maximum is not None, option.name
        assert option.minimum <= value <= option.maximum, (option.name, value)
    if option.choices:
        assert str(value).lower() in option.choices
    if option.name == "port":
        assert 1 <= value <= 65535
    if option.type == "port_list":
        assert value and all(1 <= p <= 65535 for p in value)
    if option.type in ("hostname_list", "ip_list"):
        for entry in value:
            assert (is_ip(entry) and not not_unicast(entry)) or (option.type == "hostname_list" and is_host_name(entry))
    if option.type == "hostname" and value:
        assert (is_ip(value) and not not_unicast(value)) or is_host_name(value)


def _check(section: str, option: ConfigOption, source: str, raw: Any, tmp: Path) -> None:
    try:
        value = _resolve(section, option, source, raw, tmp)
    except SettingError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert _spelling(section, option, source) in message, message
        return
    _check_in_range(option, value)


def test_every_numeric_option_declares_its_range() -> None:
    unbounded = [f"{s}.{o.name}" for s, o in EVERY
                 if o.type in NUMERIC and not o.choices and o.name != "port"
                 and (o.minimum is None or o.maximum is None)]
    assert not unbounded, unbounded


_PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROPERTY
@given(choice=st.sampled_from(EVERY), raw=TEXT, source=st.sampled_from(["env", "cli"]))
def test_any_text_for_any_setting(tmp_path: Path, choice: tuple[str, ConfigOption], raw: str, source: str) -> None:
    section, option = choice
    if source == "env" and option.env is None:
        source = "cli"
    _check(section, option, source, raw, tmp_path)


@_PROPERTY
@given(choice=st.sampled_from(EVERY), raw=TOML_VALUES)
def test_any_toml_value_for_any_setting(tmp_path: Path, choice: tuple[str, ConfigOption], raw: Any) -> None:
    section, option = choice
    _check(section, option, "file", raw, tmp_path)


@pytest.mark.parametrize(("variable", "raw"), [
    ("PORT", "9_500"), ("PORT", "\uff19\uff15\uff10\uff10"), ("PORT", "\u0669\u0665\u0660\u0660"),
    ("NFS_MOUNT_REFRESH_INTERVAL", "1ns"), ("NFS_MOUNT_REFRESH_INTERVAL", "0"), ("PROBE_INTERVAL", "10ms"),
    ("NFS_SERVER_IPS", "0.0.0.0"), ("NFS_SERVER_IPS", "255.255.255.255"), ("OBJSTORE_ENDPOINT_IPS", "239.1.1.1"),
])
def test_the_trials_accepted_nonsense_is_refused(tmp_path: Path, variable: str, raw: str) -> None:
    section, option = next((s, o) for s, o in EVERY if o.env == variable)
    with pytest.raises(SettingError, match=rf"^invalid {variable}="):
        _resolve(section, option, "env", raw, tmp_path)


@pytest.mark.parametrize(("setting", "raw"), [
    ("plugins.disk_usage.stat_workers", str(10**18)),
    ("plugins.nfs_latency.inflight_capacity", str(10**9)),
    ("plugins.objstore.inflight_capacity", str(10**9)),
    ("exporter.max_connections", str(10**12)),
])
def test_integers_have_a_maximum(tmp_path: Path, setting: str, raw: str) -> None:
    section, _, name = setting.rpartition(".")
    option = next(o for o in SECTIONS[section] if o.name == name)
    with pytest.raises(SettingError, match=rf"^invalid --set {setting}='{raw}': expected an integer from 1"):
        _resolve(section, option, "cli", raw, tmp_path)
