"""Pure parsing of /proc/mounts lines and the seed's remoteports= forms."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.targets.addresses import expand_ipv4_range, normalize
from crusoe_metrics_exporter.targets.mounts import (
    addr_options,
    nfs_lines,
    parse_mounts,
    remote_ports,
    server_part,
)

DATA = Path(__file__).parent / "data"


def test_host_mounts_fixture_parses_with_escapes_and_counts_malformed() -> None:
    lines, malformed = parse_mounts((DATA / "host_mounts.txt").read_text())
    assert malformed == 1
    nfs = nfs_lines(lines)
    assert [m.mount_point for m in nfs] == ["/mnt/data one", "/mnt/data2", "/mnt/range", "/home/shared", "/scratch"]
    assert nfs[3].fstype == "nfs4"
    assert "remoteports=dns" in nfs[0].options


@pytest.mark.parametrize(
    ("device", "server"),
    [
        ("nfs.example.test:/volumes/x", "nfs.example.test"),
        ("10.0.0.1:/", "10.0.0.1"),
        ("[fd00::10]:/export/home", "fd00::10"),
        ("fd00::1:/export", "fd00::1"),
        ("host:export", "host"),
        ("/dev/vda1", ""),
        (":/nohost", ""),
        ("[]:/x", ""),
    ],
)
def test_server_part(device: str, server: str) -> None:
    assert server_part(device) == server


def test_addr_options_keeps_ips_reports_others_and_ignores_mountaddr() -> None:
    good, bad = addr_options(("mountaddr=1.2.3.4", "addr=10.0.0.5", "addr=fd00:0::0001", "addr=nonsense"))
    assert good == ["10.0.0.5", "fd00::1"]
    assert bad == ["nonsense"]


def test_normalize_folds_spellings_and_v4_mapped() -> None:
    assert normalize("FD00:0:0::1") == ("fd00::1", 6)
    assert normalize("[::1]") == ("::1", 6)
    assert normalize("::ffff:10.1.2.3") == ("10.1.2.3", 4)
    assert normalize("nfs.example") is None
    assert normalize("") is None


def test_range_expansion_limits() -> None:
    assert expand_ipv4_range("10.0.0.254-10.0.1.1") == ["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"]
    assert expand_ipv4_range("10.0.0.4-10.0.0.1") is None
    assert len(expand_ipv4_range("10.0.0.0-10.0.0.255") or []) == 256
    assert expand_ipv4_range("10.0.0.0-10.0.1.0") is None
    assert expand_ipv4_range("fd00::1-fd00::2") is None


def _seed_remoteports_cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for line in (DATA / "seed_remoteports_option_cases.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, options, server, expected = line.split("\t")
        cases.append((name, options, server, expected))
    return cases


@pytest.mark.parametrize(("name", "options", "server", "expected"), _seed_remoteports_cases())
def test_seed_remoteports_cases(name: str, options: str, server: str, expected: str) -> None:
    rp = remote_ports(tuple(options.split(",")))
    if expected == "(empty)":
        # No option, an empty one, or dns on an IP literal: nothing beyond the server itself.
        assert rp is None or (rp.dns and normalize(server) is not None)
    elif "DNS" in name:
        assert rp is not None and rp.dns and not rp.addresses
    else:
        assert rp is not None and not rp.dns and not rp.invalid
        assert list(rp.addresses) == expected.split(",")


def test_remoteports_multiple_ranges_and_invalid_parts() -> None:
    rp = remote_ports(("remoteports=10.0.0.1-10.0.0.2~10.0.1.9~bogus~10.0.0.9-10.0.0.1",))
    assert rp is not None
    assert rp.addresses == ("10.0.0.1", "10.0.0.2", "10.0.1.9")
    assert rp.invalid == ("bogus", "10.0.0.9-10.0.0.1")


@given(st.text(max_size=400))
def test_any_mounts_text_parses_without_raising(text: str) -> None:
    lines, malformed = parse_mounts(text)
    assert malformed >= 0
    for line in nfs_lines(lines):
        server_part(line.device)
        addr_options(line.options)
        remote_ports(line.options)


@given(st.lists(st.sampled_from(["remoteports=", "dns", "10.0.0.1", "-", "~", "fd00::1", "x", "10.0.0.9", ","]),
                max_size=12))
def test_any_remoteports_value_is_classified(parts: list[str]) -> None:
    rp = remote_ports(("".join(parts),))
    if rp is not None:
        assert all(normalize(a) is not None for a in rp.addresses)
