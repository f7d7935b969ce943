"""The NVMe SMART / Health Information log page (log identifier 02h), decoded.

Offsets are those of the NVM Express Base Specification (figure "SMART /
Health Information Log Page"); multi-byte fields are little-endian. The
128-bit counters are read whole (the Go exporter kept their low 64 bits).
"""

from __future__ import annotations

from typing import NamedTuple

LOG_PAGE_SIZE = 512

#: Critical warning bits (byte 0), in the Go exporter's order and label values.
CRITICAL_WARNING_BITS = (
    "spare_low",  # 0: available spare below its threshold
    "temperature",  # 1: a temperature is outside its thresholds
    "reliability",  # 2: NVM subsystem reliability degraded
    "readonly",  # 3: media placed in read-only mode
    "volatile_backup_failed",  # 4: volatile memory backup device failed
    "pmr_unreliable",  # 5: persistent memory region became read-only or unreliable
)

_CRITICAL_WARNING = 0
_COMPOSITE_TEMPERATURE = 1  # u16, kelvin
_AVAILABLE_SPARE = 3
_PERCENTAGE_USED = 5
_POWER_ON_HOURS = 128  # u128
_UNSAFE_SHUTDOWNS = 144  # u128
_MEDIA_ERRORS = 160  # u128
_ERROR_LOG_ENTRIES = 176  # u128


class SmartLog(NamedTuple):
    critical_warning: int
    #: Composite temperature in kelvin; 0 when the controller reports none.
    temperature_kelvin: int
    available_spare: int
    percentage_used: int
    power_on_hours: int
    unsafe_shutdowns: int
    media_errors: int
    error_log_entries: int

    def warning_bits(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, self.critical_warning >> bit & 1) for bit, name in enumerate(CRITICAL_WARNING_BITS))


def _u128(page: bytes, offset: int) -> int:
    return int.from_bytes(page[offset : offset + 16], "little")


def parse_smart_log(page: bytes) -> SmartLog:
    """Decode a log page; raises ValueError when it is shorter than 512 bytes."""
    if len(page) < LOG_PAGE_SIZE:
        raise ValueError(f"SMART log page is {len(page)} bytes, expected {LOG_PAGE_SIZE}")
    return SmartLog(
        critical_warning=page[_CRITICAL_WARNING],
        temperature_kelvin=int.from_bytes(page[_COMPOSITE_TEMPERATURE : _COMPOSITE_TEMPERATURE + 2], "little"),
        available_spare=page[_AVAILABLE_SPARE],
        percentage_used=page[_PERCENTAGE_USED],
        power_on_hours=_u128(page, _POWER_ON_HOURS),
        unsafe_shutdowns=_u128(page, _UNSAFE_SHUTDOWNS),
        media_errors=_u128(page, _MEDIA_ERRORS),
        error_log_entries=_u128(page, _ERROR_LOG_ENTRIES),
    )
