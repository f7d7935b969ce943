"""nvme in the QEMU guest against a real (emulated) NVMe controller, checked against nvme-cli in the same run.

tests/vm attaches ``-device nvme,serial=cme-nvme-0``: QEMU answers the admin
commands, including Get Log Page for the SMART / health log, and Debian's
nvme-cli reads the same controller as the independent reference.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.exporter_scrape import labelsets, value
from helpers.guest import NVME_SERIAL, GuestExporter, start_exporter

from crusoe_metrics_exporter.plugins.nvme.admin import LOG_SMART, get_log_page
from crusoe_metrics_exporter.plugins.nvme.smart import CRITICAL_WARNING_BITS, LOG_PAGE_SIZE

pytestmark = pytest.mark.kernel_vm

TEMPERATURE_THRESHOLD = 0x04  # Set/Get Features: temperature threshold


@pytest.fixture(scope="module")
def controller() -> str:
    """The controller QEMU attached with our serial (nvme0 unless the guest grows more)."""
    for entry in sorted(Path("/sys/class/nvme").iterdir()):
        serial = entry / "serial"
        if serial.exists() and serial.read_text().strip() == NVME_SERIAL:
            return entry.name
    raise AssertionError(f"no NVMe controller with serial {NVME_SERIAL!r} in /sys/class/nvme")


def nvme(*args: str) -> str:
    proc = subprocess.run(["nvme", *args], capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def smart_log_cli(controller: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(nvme("smart-log", f"/dev/{controller}", "--output-format=json"))
    return data


@pytest.fixture(scope="module")
def exporter(controller: str) -> Iterator[GuestExporter]:
    ex = start_exporter(["nvme"])
    try:
        yield ex
    finally:
        ex.exporter.stop()


def test_log_page_bytes_equal_nvme_cli_and_are_kept(controller: str) -> None:
    fd = os.open(f"/dev/{controller}", os.O_RDONLY)
    try:
        ours = get_log_page(fd, LOG_SMART, LOG_PAGE_SIZE)
    finally:
        os.close(fd)
    proc = subprocess.run(["nvme", "get-log", f"/dev/{controller}", "--log-id=2", f"--log-len={LOG_PAGE_SIZE}",
                           "--raw-binary"], capture_output=True, timeout=60, check=True)
    assert len(ours) == LOG_PAGE_SIZE
    assert ours == proc.stdout, "the same page, byte for byte, as nvme-cli reads it"
    out = os.environ.get("CME_GUEST_OUT")
    if out:  # kept with `python -m tests.vm run --keep` for the byte-level fixture in tests/data
        Path(out, "qemu_smart_log.bin").write_bytes(ours)
        Path(out, "qemu_smart_log.json").write_text(json.dumps(smart_log_cli(controller), indent=1))


def test_identity_labels(controller: str, exporter: GuestExporter) -> None:
    idctrl = json.loads(nvme("id-ctrl", f"/dev/{controller}", "--output-format=json"))
    infos = labelsets(exporter.scrape(["nvme"]), "crusoe_vm_nvme_info")
    assert infos == [{"device": controller, "serial": NVME_SERIAL, "model": idctrl["mn"].strip(),
                      "firmware_rev": idctrl["fr"].strip()}]
    assert infos[0]["serial"] == idctrl["sn"].strip(), "sysfs and Identify Controller agree"


def _ours(series: dict[Any, float], controller: str) -> dict[str, float]:
    labels = {"device": controller, "serial": NVME_SERIAL}
    out = {name: value(series, f"crusoe_vm_nvme_{name}", **labels)
           for name in ("power_on_hours", "available_spare", "percentage_used", "media_errors_total",
                        "error_log_entries_total", "unsafe_shutdowns_total", "temperature_celsius")}
    for bit in CRITICAL_WARNING_BITS:
        out[f"bit_{bit}"] = value(series, "crusoe_vm_nvme_smart_critical_warning", bit=bit, **labels)
    return out


def _theirs(cli: dict[str, Any]) -> dict[str, float]:
    out = {
        "power_on_hours": cli["power_on_hours"],
        "available_spare": cli["avail_spare"],
        "percentage_used": cli["percent_used"],
        "media_errors_total": cli["media_errors"],
        "error_log_entries_total": cli["num_err_log_entries"],
        "unsafe_shutdowns_total": cli["unsafe_shutdowns"],
        # nvme-cli's JSON gives the composite temperature in kelvin.
        "temperature_celsius": cli["temperature"] - 273.15,
    }
    for i, bit in enumerate(CRITICAL_WARNING_BITS):
        out[f"bit_{bit}"] = cli["critical_warning"] >> i & 1
    return {k: float(v) for k, v in out.items()}


def test_smart_values_equal_nvme_smart_log(controller: str, exporter: GuestExporter) -> None:
    before = _theirs(smart_log_cli(controller))
    ours = _ours(exporter.scrape(["nvme"]), controller)
    after = _theirs(smart_log_cli(controller))
    # Power-on hours can only tick between the two reads at an hour boundary.
    assert before == after, "the controller's log did not change during the scrape"
    assert ours == pytest.approx(before, abs=1e-9)
    # The kernel's NVMe hwmon sensor (if built) reports the same temperature.
    for sensor in Path(f"/sys/class/nvme/{controller}").glob("hwmon*/temp1_input"):
        assert ours["temperature_celsius"] * 1000 == pytest.approx(int(sensor.read_text()), abs=1)


def _threshold(controller: str) -> int:
    text = nvme("get-feature", f"/dev/{controller}", f"--feature-id={TEMPERATURE_THRESHOLD}")
    match = re.search(r"Current value:\s*(0x[0-9a-fA-F]+)", text)
    assert match, text
    return int(match.group(1), 16) & 0xFFFF


def test_a_real_warning_bit(controller: str, exporter: GuestExporter) -> None:
    # QEMU sets the temperature warning (bit 1) while the composite
    # temperature is at or over the over-temperature threshold; lower the
    # threshold below it and the controller itself reports the warning.
    kelvin = smart_log_cli(controller)["temperature"]
    saved = _threshold(controller)
    nvme("set-feature", f"/dev/{controller}", f"--feature-id={TEMPERATURE_THRESHOLD}", f"--value={kelvin - 10}")
    try:
        cli = smart_log_cli(controller)
        ours = _ours(exporter.scrape(["nvme"]), controller)
        assert cli["critical_warning"] & 0b10, "the controller reports the temperature warning"
        assert ours == pytest.approx(_theirs(cli), abs=1e-9)
        assert ours["bit_temperature"] == 1 and ours["bit_spare_low"] == 0
    finally:
        nvme("set-feature", f"/dev/{controller}", f"--feature-id={TEMPERATURE_THRESHOLD}", f"--value={saved}")
    assert _ours(exporter.scrape(["nvme"]), controller)["bit_temperature"] == 0
    assert value(exporter.scrape(["nvme"]), "crusoe_vm_nvme_collection_errors_total") == 0


def test_collect_prints_every_family(controller: str) -> None:
    """`crusoe-metrics-exporter collect` in the guest: every nvme family, values equal nvme smart-log."""
    before = _theirs(smart_log_cli(controller))
    proc = subprocess.run(["crusoe-metrics-exporter", "collect", "--plugin", "nvme"], capture_output=True,
                          text=True, timeout=300, check=True)
    after = _theirs(smart_log_cli(controller))
    from prometheus_client.parser import text_string_to_metric_families

    series = {(s.name, frozenset(s.labels.items())): float(s.value)
              for f in text_string_to_metric_families(proc.stdout) for s in f.samples}
    families = {name for name, _ in series}
    assert families >= {f"crusoe_vm_nvme_{n}" for n in (
        "info", "smart_critical_warning", "media_errors_total", "error_log_entries_total", "percentage_used",
        "available_spare", "power_on_hours", "temperature_celsius", "unsafe_shutdowns_total",
        "collection_errors_total")}
    assert before == after
    assert _ours(series, controller) == pytest.approx(before, abs=1e-9)


def test_capabilities_it_needs(controller: str) -> None:
    """As an unprivileged user: the device node needs CAP_DAC_READ_SEARCH, the admin command CAP_SYS_ADMIN."""
    from helpers.privileges import setpriv

    def plugin(caps: list[str]) -> dict[str, str]:
        proc = subprocess.run([*setpriv(caps), "crusoe-metrics-exporter", "plugins", "--json", "--enable", "nvme"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        record: dict[str, str] = next(r for r in json.loads(proc.stdout) if r["name"] == "nvme")
        return record

    bare = plugin([])
    assert bare["state"] == "unsupported"
    assert bare["reason"].startswith(f"/dev/{controller} is unreadable: needs CAP_DAC_READ_SEARCH")
    opened = plugin(["CAP_DAC_READ_SEARCH"])
    assert opened["state"] == "unsupported"
    assert opened["reason"] == ("reading the NVMe SMART log (admin command Get Log Page) needs CAP_SYS_ADMIN "
                                "(without it)")
    assert "AmbientCapabilities=CAP_SYS_ADMIN" in opened["fix"]
    assert plugin(["CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN"])["state"] == "active"


def test_a_failing_controller_never_hides_the_real_one(controller: str, tmp_path: Path) -> None:
    """The real controller next to one that cannot answer (a device node that is /dev/null)."""
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    (sysfs / "class" / "nvme").mkdir(parents=True)
    dev.mkdir()
    (sysfs / "class" / "nvme" / controller).symlink_to(Path("/sys/class/nvme") / controller)
    (dev / controller).symlink_to(Path("/dev") / controller)
    broken = sysfs / "class" / "nvme" / "nvme9"
    broken.mkdir()
    for field, text in (("serial", "BROKEN"), ("model", "none"), ("firmware_rev", "0"), ("dev", "1:3")):
        (broken / field).write_text(text + "\n")
    (dev / "nvme9").symlink_to("/dev/null")  # char 1:3 as sysfs says, but no NVMe controller behind it
    ex = start_exporter(["nvme"], settings={"plugins.nvme.sysfs_path": str(sysfs), "plugins.nvme.dev_path": str(dev)})
    try:
        assert ex.details["nvme"]["answering"] == f"{controller} ({NVME_SERIAL})"
        assert ex.details["nvme"]["failing"] == "nvme9"
        assert ex.details["nvme"]["controllers"] == f"{controller} ({NVME_SERIAL}), nvme9 (BROKEN)"
        before = _theirs(smart_log_cli(controller))
        series = ex.scrape(["nvme"])
        assert _ours(series, controller) == pytest.approx(before, abs=1e-9)
        assert {"device": "nvme9", "serial": "BROKEN", "model": "none", "firmware_rev": "0"} in labelsets(
            series, "crusoe_vm_nvme_info")
        assert not [k for k in series if dict(k[1]).get("device") == "nvme9" and k[0] != "crusoe_vm_nvme_info"]
        assert value(series, "crusoe_vm_nvme_collection_errors_total") == 1
    finally:
        ex.exporter.stop()
