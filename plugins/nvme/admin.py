"""The NVMe admin command Get Log Page, through the kernel's passthrough ioctl.

``NVME_IOCTL_ADMIN_CMD`` takes a ``struct nvme_admin_cmd``
(include/uapi/linux/nvme_ioctl.h, 72 bytes). The ioctl's return value is -1
with errno when the kernel refused or could not send the command (EACCES
without CAP_SYS_ADMIN, ENOTTY for a device that is not an NVMe controller),
0 on success, and a **positive NVMe status** when the controller completed
the command with an error. The Go exporter ignored that positive value and
checked the completion's DW0 (``result``) instead, which Get Log Page does
not use; here the status is what decides.

No command timeout is set (``timeout_ms`` 0 = the kernel's admin timeout): a
short timeout makes the kernel abort the command and may reset a slow but
healthy controller. The collector bounds its own wait instead.
"""

from __future__ import annotations

import ctypes
import fcntl
import struct
from collections.abc import Callable

# struct nvme_admin_cmd: opcode, flags, rsvd1, nsid, cdw2, cdw3, metadata, addr,
# metadata_len, data_len, cdw10..cdw15, timeout_ms, result.
_ADMIN_CMD = struct.Struct("<BBHIIIQQII6III")
assert _ADMIN_CMD.size == 72
_RESULT_OFFSET = 68

#: _IOWR('N', 0x41, struct nvme_admin_cmd)
NVME_IOCTL_ADMIN_CMD = 0xC0484E41
OPCODE_GET_LOG_PAGE = 0x02
LOG_SMART = 0x02
#: The controller as a whole, not one namespace.
NSID_ALL = 0xFFFFFFFF

#: ioctl(fd, request, buffer, mutate) -> the syscall's return value.
Ioctl = Callable[[int, int, bytearray, bool], int]


class NvmeStatusError(OSError):
    """The controller completed the command with an error status."""

    def __init__(self, status: int) -> None:
        self.status = status
        sct, sc = status >> 8 & 0x7, status & 0xFF
        dnr = " (do not retry)" if status & 0x4000 else ""
        super().__init__(f"NVMe status 0x{status:04x}: status code type {sct}, status code 0x{sc:02x}{dnr}")


def get_log_page_command(log_id: int, nsid: int, address: int, length: int) -> bytearray:
    """The 72-byte command block for Get Log Page of ``length`` bytes into memory at ``address``."""
    if length % 4 or not 4 <= length <= 4096:
        raise ValueError(f"log page length {length} is not a multiple of 4 between 4 and 4096")
    dwords = length // 4 - 1  # NUMD is 0's based
    cdw10 = log_id | (dwords & 0xFFFF) << 16
    return bytearray(_ADMIN_CMD.pack(OPCODE_GET_LOG_PAGE, 0, 0, nsid, 0, 0, 0, address, 0, length,
                                     cdw10, 0, 0, 0, 0, 0, 0, 0))


def get_log_page(fd: int, log_id: int, length: int, nsid: int = NSID_ALL,
                 ioctl: Ioctl = fcntl.ioctl) -> bytes:
    """Read one log page from the controller open at ``fd``.

    Raises OSError when the kernel refuses the command and NvmeStatusError
    when the controller answers with an error status.
    """
    data = ctypes.create_string_buffer(length)
    command = get_log_page_command(log_id, nsid, ctypes.addressof(data), length)
    status = ioctl(fd, NVME_IOCTL_ADMIN_CMD, command, True)
    if status != 0:
        raise NvmeStatusError(status)
    return data.raw
