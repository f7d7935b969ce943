"""Probe timing that measures the network and the peer, not the exporter's own turn.

A probe thread that blocks in ``recv`` is woken when the reply arrives, but it
still has to be scheduled on a CPU and take the GIL before it can read a
clock. With other exporter threads busy (a scrape rendering, a busy plugin)
that pickup lag is up to the interpreter's switch interval (5 ms) per
wake-up, which is how a 0.2 ms NULL RPC read several ms. So the probes time
every exchange the way ``ping`` does:

- the clock is read right before the request is handed to the kernel, and
  the reply's arrival is the kernel's ``SO_TIMESTAMPNS`` receive stamp (the
  time the packet reached the network stack), not the time we got to it;
- the TCP handshake is the kernel's own RTT sample from ``TCP_INFO``;
- the probe's own work after a reply arrived (TLS crypto, parsing) is the
  thread's CPU time, which does not run while the thread waits for the GIL
  or a CPU.

:class:`PhaseClock` adds these up per phase, so a probe reports network +
peer + its own computing, whatever else the process is doing.

Receive timestamps depend on a kernel-wide switch (the ``netstamp_needed``
static key) that the first socket asking for them turns on *asynchronously*,
from a work queue: a probe that opened its socket and sent at once could get
its reply stamped at ``recvmsg`` time instead of at arrival. :func:`held`
keeps one timestamping socket open while any probe runs and checks with a
loopback datagram that arrivals are really stamped before the probes start;
between rounds nothing holds the switch, so the host pays nothing for it.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: ``SO_TIMESTAMPNS_NEW`` (Linux >= 5.1): its control message carries a
#: ``struct __kernel_timespec`` (two 64-bit fields) on every architecture
#: using the generic socket ABI (x86, arm64, riscv, ...). Where the option
#: is unknown, no stamp arrives and waits fall back to thread-side timing.
SO_TIMESTAMPNS = 64
_TIMESPEC = struct.Struct("=qq")
#: Room for the timestamp message next to any other (e.g. IP_RECVERR).
ANCILLARY_BYTES = 512

#: ``struct tcp_info`` offsets (include/uapi/linux/tcp.h, stable since 2.6).
_TCPI_RTT = 68
_TCPI_TOTAL_RETRANS = 100
_TCP_INFO_BYTES = 104


def enable_rx_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp every packet this socket receives."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def rx_stamp(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time (CLOCK_REALTIME, ns) from ``recvmsg`` ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            stamp = seconds * 1_000_000_000 + nanos
            return stamp if stamp > 0 else None
    return None


def handshake_rtt_ns(sock: socket.socket) -> int | None:
    """The kernel's SYN -> SYN-ACK round trip of a just-connected TCP socket.

    None when the SYN was retransmitted (Karn: no trustworthy sample; the
    caller's own wait, retransmission timeout included, is then the truth).
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except OSError:
        return None
    if len(info) < _TCP_INFO_BYTES:
        return None
    (rtt_us,) = struct.unpack_from("=I", info, _TCPI_RTT)
    (retransmits,) = struct.unpack_from("=I", info, _TCPI_TOTAL_RETRANS)
    if retransmits or not rtt_us:
        return None
    return int(rtt_us) * 1000


class PhaseClock:
    """Network + peer time of one probe's exchanges, split into named phases.

    A phase is a sequence of "compute, send, wait for the answer". Each wait
    lasts from the clock reading just before the send to the kernel's
    receive stamp of the last data that arrived for it; computing is the
    thread's CPU time from the latest arrival (or the phase start) to the
    next send or the end of the phase. Time this thread spent runnable but
    not running - waiting for the GIL or a CPU - counts nowhere, so
    concurrency inside the exporter cannot inflate a probe. CPU time between
    a send and the last arrival overlaps the wait and is not added twice.
    """

    def __init__(self) -> None:
        self._wall_start = time.perf_counter_ns()
        self._total = 0
        self._phase_start = 0
        self._cpu_mark = time.thread_time_ns()
        self._waiting = False
        self._sent_at = 0
        self._sent_mono = 0
        self._wait = 0
        self.phases: list[tuple[str, float]] = []

    def wall_elapsed(self) -> float:
        """Wall-clock seconds since the clock started (for failed runs: how long the attempt took)."""
        return (time.perf_counter_ns() - self._wall_start) / 1e9

    def phased(self) -> float:
        """Seconds of the phases closed so far (a successful run's duration)."""
        return sum(seconds for _name, seconds in self.phases)

    def phase(self, name: str) -> None:
        """Close the current phase under ``name``; the next one starts now."""
        self._settle()
        self.phases.append((name, (self._total - self._phase_start) / 1e9))
        self._phase_start = self._total

    def connect(self, sock: socket.socket, address: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """``sock.connect``, counted as the kernel's handshake RTT (wall time if the SYN was retransmitted).

        Setting the socket up before it is not part of any phase.
        """
        started = time.perf_counter_ns()
        sock.connect(address)
        rtt = handshake_rtt_ns(sock)
        self._total += rtt if rtt is not None else time.perf_counter_ns() - started
        self._cpu_mark = time.thread_time_ns()

    def send(self, sock: socket.socket, data: bytes) -> None:
        """``sock.sendall``; the wait for the answer starts at the clock reading right before it."""
        self._settle()
        timeout = sock.gettimeout()
        # Non-blocking, so the system call follows the clock reading at once:
        # with a timeout set, Python first polls with the GIL released and
        # may have to wait for the GIL again before it sends.
        sock.setblocking(False)
        self._waiting = True
        self._wait = 0
        self._sent_at = time.time_ns()
        self._sent_mono = time.perf_counter_ns()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        finally:
            sock.settimeout(timeout)
        if sent < len(data):
            sock.sendall(data[sent:])  # a full send buffer: only on a large request
        self._cpu_mark = time.thread_time_ns()

    def recv(self, sock: socket.socket, size: int) -> bytes:
        """``sock.recv`` (honouring its timeout); what arrived ends the wait at its kernel stamp."""
        data, ancdata, _flags, _addr = sock.recvmsg(size, ANCILLARY_BYTES)
        if data and self._waiting:
            seen = time.perf_counter_ns() - self._sent_mono
            stamp = rx_stamp(ancdata)
            # Capped by our own monotonic reading: a step of the realtime
            # clock between the send and the stamp cannot produce nonsense.
            arrived = seen if stamp is None else min(max(stamp - self._sent_at, 0), seen)
            self._wait = max(self._wait, arrived)
        self._cpu_mark = time.thread_time_ns()
        return bytes(data)

    def _settle(self) -> None:
        now = time.thread_time_ns()
        self._total += (self._wait if self._waiting else 0) + now - self._cpu_mark
        self._cpu_mark = now
        self._waiting = False
        self._wait = 0


# -- the kernel-wide receive timestamp switch ---------------------------------
_lock = threading.Lock()
_holders = 0
_keeper: socket.socket | None = None

#: How long to wait for the kernel's work queue to switch stamping on.
_SWITCH_ON_TIMEOUT = 0.25


def _stamps_at_arrival(sock: socket.socket, address: tuple[str, int]) -> bool:
    """True when a datagram is stamped when it arrives rather than when it is read."""
    sent = time.time_ns()
    sock.sendto(b"t", address)
    time.sleep(0.002)
    reading = time.time_ns()
    _data, ancdata, _flags, _addr = sock.recvmsg(16, ANCILLARY_BYTES)
    stamp = rx_stamp(ancdata)
    # A stamp taken at read time lies after ``reading``; one taken on arrival
    # lies within the send call, long before it.
    return stamp is not None and stamp - sent < reading - stamp


def _switch_on() -> socket.socket | None:
    try:
        keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        if not enable_rx_timestamps(keeper):
            keeper.close()
            return None
        keeper.bind(("127.0.0.1", 0))
        keeper.settimeout(1.0)
        address = keeper.getsockname()
        deadline = time.monotonic() + _SWITCH_ON_TIMEOUT
        while not _stamps_at_arrival(keeper, address):
            if time.monotonic() > deadline:
                log.debug("probes: kernel receive timestamps not confirmed within %.2fs", _SWITCH_ON_TIMEOUT)
                break
    except OSError as exc:
        # No loopback in this namespace or similar: the stamps may still be
        # right; the keeper keeps them switched on either way.
        log.debug("probes: receive timestamp check failed: %s", exc)
    return keeper


@contextmanager
def held() -> Iterator[None]:
    """Keep kernel receive timestamping on (and confirmed) while the block runs."""
    global _holders, _keeper
    with _lock:
        _holders += 1
        if _holders == 1:
            _keeper = _switch_on()
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _keeper is not None:
                _keeper.close()
                _keeper = None
