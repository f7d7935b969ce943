"""Byte-level: the SMART log page decoder, the admin command block and its status handling, sysfs identity."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.nvme.admin import (
    NVME_IOCTL_ADMIN_CMD,
    NvmeStatusError,
    get_log_page,
    get_log_page_command,
)
from crusoe_metrics_exporter.plugins.nvme.smart import CRITICAL_WARNING_BITS, SmartLog, parse_smart_log
from crusoe_metrics_exporter.plugins.nvme.sysfs import controller_names, read_controller

U64_MAX = 2**64 - 1


def page(**fields: int) -> bytes:
    """A 512-byte log page with the given fields set (the Go tests' buffers)."""
    buf = bytearray(512)
    buf[0] = fields.get("warning", 0)
    buf[1:3] = fields.get("kelvin", 0).to_bytes(2, "little")
    buf[3] = fields.get("spare", 0)
    buf[5] = fields.get("used", 0)
    for offset, key in ((128, "poh"), (144, "unsafe"), (160, "media"), (176, "errlog")):
        buf[offset:offset + 16] = fields.get(key, 0).to_bytes(16, "little")
    return bytes(buf)


# -- the Go exporter's buffers (nvme_test_data.md) -----------------------------

def test_all_zero() -> None:
    log = parse_smart_log(bytes(512))
    assert log == SmartLog(0, 0, 0, 0, 0, 0, 0, 0)
    assert log.warning_bits() == tuple((name, 0) for name in CRITICAL_WARNING_BITS)


def test_go_parse_case() -> None:
    log = parse_smart_log(page(warning=0b101, spare=87, used=13, poh=52341, media=7, errlog=3))
    assert (log.critical_warning, log.available_spare, log.percentage_used) == (5, 87, 13)
    assert (log.power_on_hours, log.media_errors, log.error_log_entries) == (52341, 7, 3)
    assert dict(log.warning_bits()) == {"spare_low": 1, "temperature": 0, "reliability": 1, "readonly": 0,
                                        "volatile_backup_failed": 0, "pmr_unreliable": 0}


@pytest.mark.parametrize("bit", range(6))
def test_each_warning_bit_alone(bit: int) -> None:
    bits = dict(parse_smart_log(page(warning=1 << bit)).warning_bits())
    assert [name for name, value in bits.items() if value] == [CRITICAL_WARNING_BITS[bit]]


def test_max_u64_and_beyond() -> None:
    log = parse_smart_log(page(poh=U64_MAX, media=U64_MAX))
    assert log.power_on_hours == log.media_errors == 18446744073709551615
    # The counters are 128-bit; the Go exporter read their low 64 bits only.
    assert parse_smart_log(page(media=2**64 + 5)).media_errors == 2**64 + 5


def test_temperature_and_unsafe_shutdowns() -> None:
    log = parse_smart_log(page(kelvin=310, unsafe=42))
    assert (log.temperature_kelvin, log.unsafe_shutdowns) == (310, 42)


def test_short_page_is_an_error() -> None:
    with pytest.raises(ValueError, match="511 bytes"):
        parse_smart_log(bytes(511))


@given(st.binary(min_size=512, max_size=600))
def test_any_page_decodes(raw: bytes) -> None:
    log = parse_smart_log(raw)
    assert 0 <= log.critical_warning <= 255 and 0 <= log.temperature_kelvin < 65536
    assert all(0 <= v < 2**128 for v in (log.power_on_hours, log.media_errors, log.error_log_entries))


# -- the admin command ------------------------------------------------------------

def test_command_block_layout() -> None:
    block = get_log_page_command(0x02, 0xFFFFFFFF, 0x1122334455667788, 512)
    assert len(block) == 72 and NVME_IOCTL_ADMIN_CMD == 0xC0484E41
    opcode, flags, rsvd, nsid = struct.unpack_from("<BBHI", block, 0)
    assert (opcode, flags, rsvd, nsid) == (0x02, 0, 0, 0xFFFFFFFF)
    assert struct.unpack_from("<Q", block, 24)[0] == 0x1122334455667788  # addr
    assert struct.unpack_from("<II", block, 32) == (0, 512)  # metadata_len, data_len
    # cdw10: log id 02h, NUMDL = 512 / 4 - 1 = 127 in bits 16-31.
    assert struct.unpack_from("<I", block, 40)[0] == 0x02 | 127 << 16
    assert struct.unpack_from("<II", block, 64) == (0, 0)  # timeout_ms (kernel default), result


def fake_controller(answer: bytes, status: int = 0, error: int | None = None):  # type: ignore[no-untyped-def]
    """A stand-in for the kernel: writes ``answer`` where the command's addr points, as a controller would."""
    calls: list[bytes] = []

    def ioctl(fd: int, request: int, block: bytearray, mutate: bool) -> int:
        assert request == NVME_IOCTL_ADMIN_CMD and mutate
        calls.append(bytes(block))
        if error is not None:
            raise OSError(error, os.strerror(error))
        address, length = struct.unpack_from("<Q", block, 24)[0], struct.unpack_from("<I", block, 36)[0]
        ctypes.memmove(address, answer, min(length, len(answer)))
        return status

    return ioctl, calls


def test_log_page_arrives_in_the_buffer() -> None:
    ioctl, calls = fake_controller(page(spare=87, poh=52341))
    data = get_log_page(99, 0x02, 512, ioctl=ioctl)
    assert parse_smart_log(data).power_on_hours == 52341 and len(calls) == 1


def test_positive_return_is_the_nvme_status() -> None:
    # The Go exporter ignored it (it checked the completion's DW0 instead).
    ioctl, _ = fake_controller(page(spare=87), status=0x4002)
    with pytest.raises(NvmeStatusError, match=r"0x4002.*status code 0x02 \(do not retry\)") as info:
        get_log_page(99, 0x02, 512, ioctl=ioctl)
    assert info.value.status == 0x4002
    ioctl, _ = fake_controller(bytes(512), status=0x0201)
    with pytest.raises(NvmeStatusError, match="status code type 2"):
        get_log_page(99, 0x02, 512, ioctl=ioctl)


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES, errno.EIO, errno.ENOTTY])
def test_kernel_refusals_propagate(code: int) -> None:
    ioctl, _ = fake_controller(bytes(512), error=code)
    with pytest.raises(OSError) as info:
        get_log_page(99, 0x02, 512, ioctl=ioctl)
    assert info.value.errno == code


def test_real_ioctl_on_a_device_that_is_not_nvme() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            get_log_page(fd, 0x02, 512)
        assert info.value.errno == errno.ENOTTY
    finally:
        os.close(fd)


# -- sysfs -------------------------------------------------------------------------

def fake_sysfs(root: Path, controllers: dict[str, tuple[str, str, str]], devnums: dict[str, str] | None = None) -> Path:
    for name, (serial, model, firmware) in controllers.items():
        base = root / "class" / "nvme" / name
        base.mkdir(parents=True, exist_ok=True)
        for field, value in (("serial", serial), ("model", model), ("firmware_rev", firmware)):
            (base / field).write_text(value)  # the Go tests wrote no trailing newline
        (base / "dev").write_text((devnums or {}).get(name, f"241:{name[4:]}") + "\n")
    return root


def test_identity_and_device_number(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {"nvme0": ("SN001", "DriveA", "1.0"), "nvme1": ("SN002", "DriveB", "2.0")})
    c = read_controller(root, Path("/dev"), "nvme1")
    assert (c.name, c.identity, c.device, c.devnum, c.problem) == (
        "nvme1", ("SN002", "DriveB", "2.0"), Path("/dev/nvme1"), (241, 1), "")


def test_identity_padding_is_trimmed(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {"nvme0": ("SN123" + " " * 15, "TestDrive 4TB" + " " * 27, "FW1.0   ")})
    assert read_controller(root, Path("/dev"), "nvme0").identity == ("SN123", "TestDrive 4TB", "FW1.0")


def test_only_controllers_in_numeric_order(tmp_path: Path) -> None:
    base = tmp_path / "class" / "nvme"
    for name in ("nvme10", "nvme0", "nvme2", "nvme-subsystem0", "nvme", "nvme0n1", "something_else", "nvme-fabrics"):
        (base / name).mkdir(parents=True)
    assert controller_names(tmp_path) == ["nvme0", "nvme2", "nvme10"]


def test_unreadable_identity_is_empty_and_said(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {"nvme0": ("SN\xff\x01X", "M", "F")})
    (root / "class" / "nvme" / "nvme0" / "model").unlink()
    (root / "class" / "nvme" / "nvme0" / "dev").write_text("garbage\n")
    c = read_controller(root, Path("/dev"), "nvme0")
    assert c.identity == ("SN???X", "", "F"), "non-ASCII and control bytes never reach a label"
    assert "model" in c.problem and "not MAJOR:MINOR" in c.problem and c.devnum is None


# -- a page captured from a real (QEMU-emulated) controller ---------------------------

def test_captured_qemu_log_page_equals_nvme_cli() -> None:
    data = Path(__file__).parent / "data"
    raw = (data / "qemu_smart_log.bin").read_bytes()
    cli = json.loads((data / "qemu_smart_log.json").read_text())
    log = parse_smart_log(raw)
    assert log == SmartLog(
        critical_warning=cli["critical_warning"],
        temperature_kelvin=cli["temperature"],
        available_spare=cli["avail_spare"],
        percentage_used=cli["percent_used"],
        power_on_hours=int(cli["power_on_hours"]),
        unsafe_shutdowns=int(cli["unsafe_shutdowns"]),
        media_errors=int(cli["media_errors"]),
        error_log_entries=int(cli["num_err_log_entries"]),
    )
    # QEMU's composite temperature (323 K) and the fields nvme-cli shows beyond ours, at their offsets.
    assert log.temperature_kelvin == 323
    assert int.from_bytes(raw[32:48], "little") == int(cli["data_units_read"])
    assert int.from_bytes(raw[64:80], "little") == int(cli["host_read_commands"])
