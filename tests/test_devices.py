"""core/devices.py: device selection and the kernel's device-name table."""

from __future__ import annotations

from pathlib import Path

import pytest

from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.sdk import (
    DEFAULT_DEVICE_INCLUDE,
    DeviceFilter,
    DeviceOptions,
    PluginSpec,
    Support,
    device_names,
    parse_device_table,
)
from crusoe_metrics_exporter.testing import check_declaration, options_for


def test_default_selects_whole_virtio_disks_only() -> None:
    f = DeviceFilter()
    assert [n for n in ("vda", "vdb", "vdz", "vdaa", "vdab") if f.matches(n)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]
    for name in ("vda1", "vdaa12", "sda", "nvme0n1", "dm-0", "loop0", "xvda", "vd", "VDA", "vda "):
        assert not f.matches(name), name


def test_include_and_exclude_combine_like_node_exporter() -> None:
    f = options_for(DeviceOptions, {"device_include": r"^(vd|sd)[a-z]+", "device_exclude": r"^sdb"}).device_filter()
    assert f.matches("vda")
    assert f.matches("sda")
    assert f.matches("sda1")  # include is searched, not fully matched
    assert not f.matches("sdb")
    assert not f.matches("nvme0n1")


def test_empty_include_means_everything_and_exclude_still_applies() -> None:
    f = options_for(DeviceOptions, {"device_include": "", "device_exclude": r"^loop"}).device_filter()
    assert f.matches("nvme0n1p1")
    assert f.matches("dm-3")
    assert not f.matches("loop7")


def test_defaults_when_nothing_is_configured() -> None:
    f = options_for(DeviceOptions).device_filter()
    assert f.include is not None and f.include.pattern == DEFAULT_DEVICE_INCLUDE
    assert f.exclude is None


def test_match_cache_is_bounded() -> None:
    f = DeviceFilter()
    for i in range(10_000):
        f.matches(f"vd{i}")
    assert len(f._cache) <= 4096
    assert f.matches("vda") and not f.matches("vd9999")


def test_options_are_valid_declarations() -> None:
    # The core accepts them as a plugin's options (names, defaults), inherited or as they are.
    spec = PluginSpec("x", "d", (), lambda ctx: None, lambda ctx: Support.ok(), options=DeviceOptions)  # type: ignore[arg-type,return-value]
    from crusoe_metrics_exporter.sdk import MetricSpec

    spec = PluginSpec("x", "d", (MetricSpec.errors("x_collection_errors_total", "e"),), spec.factory,
                      spec.check_support, options=DeviceOptions)
    check_declaration(spec)


def test_a_bad_regex_stops_with_the_setting_named() -> None:
    with pytest.raises(SettingError, match=r"device_include='\(': expected a valid regular expression"):
        options_for(DeviceOptions, {"device_include": "("})


def test_device_table_from_real_kernel_samples() -> None:
    table = device_names(Path("/proc"))
    assert table, "this machine has block devices"
    # Every entry agrees with sysfs, which the kernel derives from the same devices.
    checked = 0
    for (major, minor), name in table.items():
        dev = Path("/sys/class/block") / name / "dev"
        if dev.exists():
            assert dev.read_text().strip() == f"{major}:{minor}"
            checked += 1
    assert checked > 0

    # Lines from procfs's fixture (Apache-2.0, prometheus/procfs testdata): sda and sdc share 8:0
    # there, as a copy-paste in a hand-made sample would; the later line wins.
    sample = """\
   8       0 sda 25354637 34367663 1003346126 18492372 28444756 11134226 505697032 63877960 0 9653880 82621804
 252       0 dm-0 59910002 0 1003337218 46229572 39231014 0 505696880 1158557800 0 11325968 1206301256
 254       1 vda1 668 85 5984 956 207 4266 35784 32772 0 8808 33720
 259       0 nvme0n1 47114 4 4643973 21650 1078320 43950 39451633 1011053 0 222766 1032546
   8       0 sdc 14202 71 579164 21861 2995 1589 180500 40875 0 11628 55200 0 0 0 0 127 182
"""
    assert parse_device_table(sample) == {(8, 0): "sdc", (252, 0): "dm-0", (254, 1): "vda1", (259, 0): "nvme0n1"}


def test_device_table_skips_bad_lines_and_keeps_good_ones() -> None:
    text = "\n".join(
        [
            " 254 0 vda 1 2 3",
            "garbage",
            "",
            " x 1 sdz 0 0",
            " 8 ² sdq 0",  # a unicode digit int() would choke on
            " 8",
            " 8 16",
            "\x00\xff 1 2",
            " 254 16 vdb",
        ]
    )
    assert parse_device_table(text) == {(254, 0): "vda", (254, 16): "vdb"}


def test_device_table_missing_or_binary_file(tmp_path: Path) -> None:
    assert device_names(tmp_path) == {}
    (tmp_path / "diskstats").write_bytes(bytes(range(256)) * 50)
    assert device_names(tmp_path) == {}
    (tmp_path / "diskstats").write_bytes(b"")
    assert device_names(tmp_path) == {}


@pytest.mark.parametrize("name", ["vda", "vdb", "vdaa"])
def test_seed_default_regex_documented_examples(name: str) -> None:
    assert DeviceFilter().matches(name)
