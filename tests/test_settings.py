"""Configuration: precedence, the seed's environment variables, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.contract import ConfigOption
from crusoe_metrics_exporter.host import declared_options, discover_services
from crusoe_metrics_exporter.options import (
    SettingError,
    accepted_range,
    format_duration,
    format_number,
    parse_duration,
    parse_option,
    to_text,
)
from crusoe_metrics_exporter.settings import Overrides, Settings, resolve

PLUGIN_OPTIONS = {"probes": (ConfigOption("interval", "duration", 300.0, "h", env="PROBE_INTERVAL"),)}
#: The installed shared services' tables ([targets], [ebpf]), found the way the exporter finds them.
SERVICE_OPTIONS = declared_options(discover_services())


def _resolve(env: dict[str, str], path: Path | None = None,
             cli: dict[str, str] | None = None) -> tuple[Settings, list[str]]:
    return resolve(PLUGIN_OPTIONS, path, {"HOST_PROC_PATH": "/proc", **env}, Overrides(cli or {}),
                   service_options=SERVICE_OPTIONS)


def test_defaults_follow_the_seed_readme() -> None:
    s, _ = _resolve({})
    assert s.core["port"] == 9500 and s.core["listen_address"] == ""
    assert s.services["targets"]["nfs_target_ports"] == [2049]
    assert s.services["targets"]["nfs_enable_volume_id"] is True
    assert s.services["targets"]["nfs_mount_refresh_interval"] == 30.0
    assert s.services["targets"]["objstore_endpoint_ports"] == [443, 80]
    assert s.plugins["probes"]["interval"] == 300.0
    assert s.sources["exporter.port"] == "default"


def test_every_seed_environment_variable_is_honoured() -> None:
    s, _ = _resolve(
        {
            "PORT": "9600",
            "HOST_PROC_PATH": "/host/proc",
            "NFS_SERVER_IPS": "10.0.0.1, nfs.example ,",
            "NFS_TARGET_PORTS": "2049,20049",
            "NFS_ENABLE_VOLUME_ID": "false",
            "NFS_MOUNT_REFRESH_INTERVAL": "1m30s",
            "PROBE_INTERVAL": "30s",
            "OBJSTORE_ENDPOINT_FQDN": "object.example",
            "OBJSTORE_ENDPOINT_IPS": "192.0.2.1,2001:db8::1",
            "OBJSTORE_ENDPOINT_PORT": "443",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert s.core["port"] == 9600 and s.core["host_proc_path"] == "/host/proc"
    assert s.core["log_level"] == "debug"
    assert s.services["targets"]["nfs_server_ips"] == ["10.0.0.1", "nfs.example"]
    assert s.services["targets"]["nfs_target_ports"] == [2049, 20049]
    assert s.services["targets"]["nfs_enable_volume_id"] is False
    assert s.services["targets"]["nfs_mount_refresh_interval"] == 90.0
    assert s.plugins["probes"]["interval"] == 30.0
    assert s.services["targets"]["objstore_endpoint_fqdn"] == "object.example"
    assert s.services["targets"]["objstore_endpoint_ips"] == ["192.0.2.1", "2001:db8::1"]
    assert s.services["targets"]["objstore_endpoint_ports"] == [443]
    assert s.sources["targets.nfs_target_ports"] == "environment NFS_TARGET_PORTS"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("PORT", "abc", "an integer port between 1 and 65535"),
        ("PORT", "70000", "an integer port between 1 and 65535"),
        ("NFS_TARGET_PORTS", "2049,nfs", "a comma-separated list of ports"),
        ("NFS_TARGET_PORTS", "0", "a comma-separated list of ports"),
        ("OBJSTORE_ENDPOINT_PORT", ",", "a comma-separated list of ports"),
        ("NFS_ENABLE_VOLUME_ID", "maybe", "true or false"),
        ("NFS_MOUNT_REFRESH_INTERVAL", "30", "a duration such as 30s"),
        ("PROBE_INTERVAL", "-5m", "a duration such as 30s"),
        ("PROBE_INTERVAL", "5 minutes", "a duration such as 30s"),
        ("LOG_LEVEL", "loud", "one of debug, info, warn, warning, error, fatal"),
        ("OBJSTORE_ENDPOINT_IPS", "192.0.2.1,1.2.3.x", "a comma-separated list of unicast IP addresses"),
        ("NFS_SERVER_IPS", "10.0.0.1,not a host!", "a comma-separated list of host names or unicast IP addresses"),
        ("OBJSTORE_ENDPOINT_FQDN", "object store.example", "a host name or unicast IP address"),
        ("LISTEN_ADDRESS", "0.0.0.0:9500", "a host name or IP address of this host"),
    ],
)
def test_invalid_values_stop_with_one_line_naming_variable_value_and_form(var: str, value: str, expected: str) -> None:
    with pytest.raises(SettingError) as info:
        _resolve({var: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid {var}={value!r}")
    assert expected in message


def test_empty_variables_count_as_unset() -> None:
    s, _ = _resolve({"PORT": "", "OBJSTORE_ENDPOINT_PORT": " "})
    assert s.core["port"] == 9500 and s.services["targets"]["objstore_endpoint_ports"] == [443, 80]
    assert s.sources["exporter.port"] == "default"


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[exporter]\nport = 9001\nlog_level = "warn"\n[plugins.probes]\ninterval = "10m"\n'
                   '[targets]\nnfs_target_ports = [2049, 3049]\n')
    s, _ = _resolve({"PORT": "9002", "PROBE_INTERVAL": "1m"}, cfg, {"exporter.port": "9003"})
    assert s.core["port"] == 9003 and s.sources["exporter.port"] == "command line"
    assert s.plugins["probes"]["interval"] == 60.0
    assert s.sources["plugins.probes.interval"] == "environment PROBE_INTERVAL"
    assert s.core["log_level"] == "warn" and s.sources["exporter.log_level"] == f"config file {cfg}"
    assert s.services["targets"]["nfs_target_ports"] == [2049, 3049]
    assert s.core["collect_timeout"] == 5.0 and s.sources["exporter.collect_timeout"] == "default"


def test_file_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[exporter]\nprot = 1\n")
    with pytest.raises(SettingError, match="unknown key 'prot' in \\[exporter\\]"):
        _resolve({}, cfg)
    cfg.write_text("[exporter]\nport = 'x'\n")
    with pytest.raises(SettingError, match=r"invalid \[exporter\] port='x'"):
        _resolve({}, cfg)
    cfg.write_text("[exporter\n")
    with pytest.raises(SettingError, match="not valid TOML"):
        _resolve({}, cfg)
    cfg.write_text("[nonsense]\n")
    with pytest.raises(SettingError, match="unknown table"):
        _resolve({}, cfg)


def test_a_config_file_that_is_not_utf8_toml_is_one_line_naming_it(tmp_path: Path) -> None:
    # It was "unexpected error: UnicodeDecodeError" from the CLI.
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"[exporter]\nport = 9500\n\xff\xfe\x00garbage")
    with pytest.raises(SettingError) as err:
        _resolve({}, cfg)
    assert str(err.value) == f"config file {cfg}: not UTF-8 text (invalid byte at offset 23); expected a TOML file"
    cfg.unlink()
    cfg.symlink_to("/dev/zero")  # passes is_file()? no: refused before any read, never a hang or OOM
    with pytest.raises(SettingError, match="expected an existing TOML file"):
        _resolve({}, cfg)
    cfg.unlink()
    with cfg.open("wb") as f:
        f.truncate(100 * 1024 * 1024)
    with pytest.raises(SettingError) as err:
        _resolve({}, cfg)
    assert str(err.value) == f"config file {cfg}: cannot be read: larger than 1048576 bytes"


def test_table_for_a_plugin_that_is_not_installed_only_warns(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[plugins.gone]\nx = 1\n")
    _, warnings = _resolve({}, cfg)
    assert any("[plugins.gone]" in w for w in warnings)


def test_unknown_command_line_setting_is_refused() -> None:
    with pytest.raises(SettingError, match=r"unknown setting 'plugins\.probes\.intervall'"):
        _resolve({}, None, {"plugins.probes.intervall": "1s"})


def test_host_proc_path_auto_detection() -> None:
    s, _ = resolve({}, None, {}, Overrides({}))
    expected = "/host/proc" if Path("/host/proc/1/mounts").exists() else "/proc"
    assert s.core["host_proc_path"] == expected and s.sources["exporter.host_proc_path"] == "auto-detected"


@given(st.integers(min_value=0, max_value=10 * 86400))
def test_durations_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("address", "accepted"), [
    ("", True), ("0.0.0.0", True), ("::", True), ("127.0.0.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("224.0.0.1", False), ("255.255.255.255", False), ("ff02::1", False),
])
def test_listen_address_takes_every_interface_but_no_group_address(address: str, accepted: bool) -> None:
    """0.0.0.0 and :: say "every interface" to a listener; a multicast or broadcast address is no local address."""
    if accepted:
        settings, _ = _resolve({"LISTEN_ADDRESS": address})
        assert settings.core["listen_address"] == address
        return
    with pytest.raises(SettingError) as err:
        _resolve({"LISTEN_ADDRESS": address})
    assert str(err.value).startswith(f"invalid LISTEN_ADDRESS={address!r}: {address!r} is ")
    assert "not one host's address; expected a host name or IP address of this host" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("value", "shown"), [
    (1048576, "1048576"), (1024 * 1024 * 1024, "1073741824"), (10_000_000.0, "10000000"), (2**63 - 1, str(2**63 - 1)),
    (0.00005, "0.00005"), (2.5, "2.5"), (1e-9, "0.000000001"), (123456789.125, "123456789.125"), (-3, "-3"),
    (0.007 * 1000, "7"),
])
def test_numbers_are_shown_as_typed_never_in_exponent_notation(value: float, shown: str) -> None:
    assert format_number(value) == shown


def test_large_limits_are_shown_whole_in_the_reference_and_in_errors() -> None:
    option = ConfigOption("max_bytes", "int", 33554432, "h", minimum=1024 * 1024, maximum=1024 * 1024 * 1024)
    assert accepted_range(option) == "from 1048576 to 1073741824"
    with pytest.raises(SettingError) as err:
        parse_option(option, "5", "exporter.max_bytes")
    assert str(err.value) == "invalid exporter.max_bytes='5': expected an integer from 1048576 to 1073741824"
    small = ConfigOption("share", "float", 0.5, "h", minimum=0.00005, maximum=1e7)
    assert accepted_range(small) == "from 0.00005 to 10000000"
    assert to_text(small, 0.00005) == "0.00005" and to_text(option, 33554432) == "33554432"
    # what config show / the reference print parses back to the same value
    assert parse_option(small, to_text(small, 0.00005), "x") == 0.00005


@pytest.mark.parametrize("seconds", [0.007, 0.0001, 1e-9, 1234567.5, 0.25, 90061.0])
def test_durations_are_shown_readably_and_round_trip(seconds: float) -> None:
    shown = format_duration(seconds)
    assert "e" not in shown.replace("µ", "")
    assert parse_duration(shown) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25),
                                                ("1.5s", 1.5), ("0", 0)])
def test_go_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300"])
@pytest.mark.parametrize("key", ["exporter.collect_timeout", "targets.nfs_mount_refresh_interval",
                                 "exporter.port"])
def test_non_finite_numbers_in_the_file_are_refused_in_one_line(tmp_path: Path, key: str, value: str) -> None:
    # TOML has inf and nan floats; a duration of inf crashed config show and
    # every scrape (OverflowError), an int of inf escaped as OverflowError.
    section, _, name = key.partition(".")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{name} = {value}\n")
    with pytest.raises(SettingError, match=rf"invalid \[{section}\] {name}="):
        _resolve({}, cfg)


def test_non_finite_float_option_is_refused() -> None:
    options = {"probes": (ConfigOption("ratio", "float", 1.0, "h", env="RATIO"),)}
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(SettingError, match=rf"invalid RATIO='{text}'"):
            resolve(options, None, {"HOST_PROC_PATH": "/proc", "RATIO": text})


@pytest.mark.parametrize("value", ["0", "0s", "1ms"])
def test_collect_timeout_too_short_to_collect_anything_is_refused(value: str) -> None:
    # 0 used to be accepted: every plugin then timed out on every scrape.
    with pytest.raises(SettingError, match=r"invalid --set exporter\.collect_timeout="):
        _resolve({}, None, {"exporter.collect_timeout": value})


def test_command_line_errors_name_the_flag_the_user_can_type() -> None:
    with pytest.raises(SettingError, match=r"^invalid --port='x'"):
        _resolve({}, None, {"exporter.port": "x"})
    # There is no --state-dir flag: the value came from --set.
    with pytest.raises(SettingError, match=r"^invalid --set exporter\.state_dir=''"):
        _resolve({}, None, {"exporter.state_dir": ""})
    with pytest.raises(SettingError, match=r"^invalid --set ebpf\.mount_tracefs='x'"):
        _resolve({}, None, {"ebpf.mount_tracefs": "x"})


def test_empty_host_proc_path_outside_the_environment_is_refused(tmp_path: Path) -> None:
    # An empty variable means unset; an empty file value or flag resolved to
    # Path(""), the current directory, and every procfs plugin read from it.
    with pytest.raises(SettingError, match=r"^invalid --host-proc-path='': expected a file system path"):
        _resolve({}, None, {"exporter.host_proc_path": ""})
    cfg = tmp_path / "c.toml"
    cfg.write_text('[exporter]\nhost_proc_path = " "\n')
    with pytest.raises(SettingError, match=r"^invalid \[exporter\] host_proc_path=''"):
        resolve({}, cfg, {}, Overrides({}))


# Full-width 9500, Arabic-Indic 9500, Devanagari 9.
@pytest.mark.parametrize("text", ["9_500", "\uff19\uff15\uff10\uff10", "\u0669\u0665\u0660\u0660", "0x2513",
                                  "+ 9500", "950\u096f"])
def test_numbers_are_ascii_digits_only(text: str) -> None:
    # "9_500", full-width and Arabic-Indic digits all became port 9500.
    with pytest.raises(SettingError) as err:
        _resolve({"PORT": text})
    assert str(err.value) == f"invalid PORT={text!r}: expected an integer port between 1 and 65535"
    with pytest.raises(SettingError, match=r"^invalid NFS_TARGET_PORTS="):
        _resolve({"NFS_TARGET_PORTS": f"2049,{text}"})
    with pytest.raises(SettingError, match=r"^invalid NFS_MOUNT_REFRESH_INTERVAL="):
        _resolve({"NFS_MOUNT_REFRESH_INTERVAL": f"{text}s"})


@pytest.mark.parametrize(("entry", "why"), [
    ("0.0.0.0", "the unspecified address"),
    ("::", "the unspecified address"),
    ("255.255.255.255", "the broadcast address"),
    ("::ffff:255.255.255.255", "the broadcast address"),
    ("224.0.0.1", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("0.1.2.3", "in 0.0.0.0/8 (this network)"),
    ("240.0.0.9", "in the reserved 240.0.0.0/4"),
])
def test_probe_and_filter_targets_are_unicast_host_addresses(entry: str, why: str) -> None:
    for variable in ("NFS_SERVER_IPS", "OBJSTORE_ENDPOINT_IPS"):
        with pytest.raises(SettingError) as err:
            _resolve({variable: f"10.0.0.1,{entry}"})
        assert str(err.value).startswith(f"invalid {variable}='10.0.0.1,{entry}': entry '{entry}' is {why}, not one "
                                         "host's address; expected a comma-separated list of ")
    # the single-value host option gets the same check, in one line
    with pytest.raises(SettingError) as err:
        _resolve({"OBJSTORE_ENDPOINT_FQDN": entry})
    assert str(err.value) == (f"invalid OBJSTORE_ENDPOINT_FQDN={entry!r}: {entry!r} is {why}, not one host's address; "
                              "expected a host name or unicast IP address")
    settings, _ = _resolve({"NFS_SERVER_IPS": "10.0.0.1,127.0.0.1,::1,nfs.example.com",
                            "OBJSTORE_ENDPOINT_IPS": "192.0.2.1,2001:db8::1"})
    assert settings.service("targets")["nfs_server_ips"] == ["10.0.0.1", "127.0.0.1", "::1", "nfs.example.com"]
