"""The few bpf(2) and perf_event_open(2) calls the exporter makes, through ctypes.

The long-running exporter never imports bcc (it costs ~70 MB before compiling
anything); the programs and maps arrive as file descriptors from the loader
helper, and everything after that is plain system calls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from crusoe_metrics_exporter.files import read_text

# (bpf, perf_event_open) syscall numbers; these two architectures are what the
# exporter ships for.
_SYSCALLS = {"x86_64": (321, 298), "aarch64": (280, 241)}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

BPF_ANY = 0

BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)


class _MapElemAttr(ctypes.Structure):
    # union bpf_attr, the BPF_MAP_*_ELEM member; ctypes aligns key to 8 bytes.
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _ProgLoadAttr(ctypes.Structure):
    # union bpf_attr, the BPF_PROG_LOAD member up to attach_btf_id and
    # attach_prog_fd (5.5+ layout; every field after them stays zero).
    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class _MapCreateAttr(ctypes.Structure):
    # union bpf_attr, the BPF_MAP_CREATE member up to map_name (4.15+); later fields stay zero.
    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    )


class _RawTracepointAttr(ctypes.Structure):
    # union bpf_attr, the BPF_RAW_TRACEPOINT_OPEN member (name NULL for tp_btf).
    _fields_ = (("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32))


class _InfoAttr(ctypes.Structure):
    # union bpf_attr, the BPF_OBJ_GET_INFO_BY_FD member.
    _fields_ = (("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64))


#: struct bpf_prog_info up to recursion_misses (5.12+): byte offsets of the
#: fields we read. The kernel fills min(our size, its size) and says how
#: much in info_len, so an older kernel simply reports less.
_PROG_INFO_SIZE = 232
_RUN_TIME_NS, _RUN_CNT, _RECURSION_MISSES = 192, 200, 208


class _PerfEventAttr(ctypes.Structure):
    # The leading members of struct perf_event_attr, up to config2
    # (PERF_ATTR_SIZE_VER1, accepted by every kernel with perf + BPF).
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
    )


def _numbers() -> tuple[int, int]:
    machine = platform.machine()
    try:
        return _SYSCALLS[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"no bpf syscall numbers known for architecture {machine}") from None


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_numbers()[0], cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under ``key``, or None when the key is absent."""
    value = ctypes.create_string_buffer(value_size)
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = _MapElemAttr(map_fd, ctypes.addressof(key_buf), ctypes.addressof(value), 0)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return value.raw


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _MapElemAttr(map_fd, ctypes.addressof(key_buf), ctypes.addressof(value_buf), flags))


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _MapElemAttr(map_fd, ctypes.addressof(key_buf), 0, 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int, limit: int) -> list[bytes]:
    """Every key of a hash map, at most ``limit`` of them.

    Walking a hash map that the kernel changes underneath can restart from the
    beginning when the current key is deleted; the limit keeps that finite.
    """
    keys: list[bytes] = []
    seen: set[bytes] = set()
    current = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    attr = _MapElemAttr(map_fd, 0, ctypes.addressof(nxt), 0)
    while len(keys) < limit:
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                break
            raise
        key = nxt.raw
        if key in seen:
            # The walk restarted because an entry vanished; what follows is
            # what we already have.
            break
        seen.add(key)
        keys.append(key)
        ctypes.memmove(current, nxt, key_size)
        attr.key = ctypes.addressof(current)
    return keys


def first_online_cpu() -> int:
    """The lowest online CPU ("0-3,5" -> 0); CPU 0 can be offline on some hosts."""
    try:
        text = read_text("/sys/devices/system/cpu/online").strip()
        return int(text.split(",")[0].split("-")[0])
    except (OSError, ValueError):
        return 0


def perf_event_open(event_type: int, config: int, config1: int = 0) -> int:
    """A perf event on one online CPU for all processes.

    A BPF program attached to a tracepoint or kprobe event runs on every CPU
    whichever CPU the event was opened on, so one event per attach point is enough.
    """
    attr = _PerfEventAttr()
    attr.type = event_type
    attr.size = ctypes.sizeof(_PerfEventAttr)
    attr.config = config
    attr.sample_period = 1
    attr.wakeup_events = 1
    attr.config1 = config1
    ret = _libc.syscall(_numbers()[1], ctypes.byref(attr), -1, first_online_cpu(), -1, PERF_FLAG_FD_CLOEXEC)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def perf_event_attach_bpf(perf_fd: int, prog_fd: int) -> None:
    """Attach a loaded program to a perf event and enable it."""
    for request, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
        if _libc.ioctl(perf_fd, request, arg) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


def perf_event_disable(perf_fd: int) -> None:
    _libc.ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0)


def prog_load(
    prog_type: int,
    insns: int,
    insn_bytes: int,
    license_: bytes,
    *,
    name: str = "",
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    kern_version: int = 0,
) -> int:
    """BPF_PROG_LOAD from instructions at address ``insns``; the verifier's complaint on failure.

    Used by the loader helper for program types bcc cannot load itself
    (``tp_btf``: BPF_PROG_TYPE_TRACING with an attach BTF id). The first try
    runs without a verifier log (cheaper); a rejected program is loaded
    again with one, for the reason.
    """
    lic = ctypes.create_string_buffer(license_)
    attr = _ProgLoadAttr()
    attr.prog_type = prog_type
    attr.insn_cnt = insn_bytes // 8
    attr.insns = insns
    attr.license = ctypes.addressof(lic)
    attr.prog_name = name.encode()[:15]
    attr.expected_attach_type = expected_attach_type
    attr.attach_btf_id = attach_btf_id
    attr.kern_version = kern_version
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as first:
        if first.errno not in (errno.EACCES, errno.EINVAL):
            raise
    log = ctypes.create_string_buffer(1 << 20)
    attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        lines = [ln for ln in log.value.decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if not ln.startswith(("processed ", "verification time"))), "")
        raise OSError(exc.errno, f"{exc.strerror}: {detail}" if detail else exc.strerror) from None


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, *, flags: int = 0,
               name: str = "") -> int:
    """BPF_MAP_CREATE; returns the new map's descriptor (the compile cache recreates bcc's maps with it)."""
    attr = _MapCreateAttr(map_type, key_size, value_size, max_entries, flags, 0, 0, name.encode()[:15])
    return _bpf(BPF_MAP_CREATE, attr)


def raw_tracepoint_open(prog_fd: int, name: str | None) -> int:
    """Attach a raw tracepoint program to tracepoint ``name`` (or a ``tp_btf`` one, name None).

    Returns the link's file descriptor: the program stays attached exactly
    as long as that descriptor is open.
    """
    buf = ctypes.create_string_buffer(name.encode()) if name is not None else None
    attr = _RawTracepointAttr(ctypes.addressof(buf) if buf is not None else 0, prog_fd, 0)
    fd = _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    del buf
    return fd


def enable_run_stats() -> int:
    """BPF_ENABLE_STATS: run time and count are measured while the returned descriptor is open (5.8+).

    Scoped to the caller (closing the descriptor, or exiting, ends it), unlike
    writing the ``kernel.bpf_stats_enabled`` sysctl; benchmarks and tests use it.
    """
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)
    ret = _libc.syscall(_numbers()[0], BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def prog_info(prog_fd: int) -> dict[str, int]:
    """run_time_ns, run_cnt and (kernel 5.12+) recursion_misses of a program, from BPF_OBJ_GET_INFO_BY_FD."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    attr = _InfoAttr(prog_fd, _PROG_INFO_SIZE, ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    raw, filled = info.raw, attr.info_len
    out = {}
    for key, offset in (("run_time_ns", _RUN_TIME_NS), ("run_cnt", _RUN_CNT), ("recursion_misses", _RECURSION_MISSES)):
        if filled >= offset + 8:
            out[key] = int.from_bytes(raw[offset : offset + 8], "little")
    return out


def keep_cstring(text: str) -> tuple[ctypes.Array[ctypes.c_char], int]:
    """A NUL-terminated buffer and its address, for attr fields that take a pointer."""
    buf = ctypes.create_string_buffer(text.encode())
    return buf, ctypes.addressof(buf)


def fdinfo(fd: int, pid: int | str = "self") -> dict[str, str]:
    """The key: value lines the kernel shows for a bpf fd (ids, sizes, run stats)."""
    out: dict[str, str] = {}
    try:
        text = read_text(f"/proc/{pid}/fdinfo/{fd}")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


#: A bpf(2) command no kernel defines: the kernel answers EINVAL after its
#: own checks, so any other answer comes from a filter in front of it.
_BPF_CMD_NONE = 0x7FFF


def filter_probe() -> dict[str, int]:
    """errno of a deliberately invalid bpf() and perf_event_open() call, per syscall name.

    The kernel rejects both calls on their arguments (bpf: EINVAL for an
    unknown command; perf_event_open: EFAULT for a NULL attr) without side
    effects. A seccomp filter or LSM that denies the syscall answers first,
    usually with EPERM (container runtimes' default profiles) or ENOSYS.
    """
    bpf_nr, perf_nr = _numbers()
    out = {}
    for name, args in (("bpf", (bpf_nr, _BPF_CMD_NONE, 0, 0)), ("perf_event_open", (perf_nr, 0, -1, 0, -1, 0))):
        ret = _libc.syscall(*(ctypes.c_long(a) for a in args))
        out[name] = ctypes.get_errno() if ret < 0 else 0
        if ret >= 0:
            os.close(int(ret))
    return out
