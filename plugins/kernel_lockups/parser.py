"""Parsing /dev/kmsg records and recognising the kernel's lockup and stall reports.

A read of /dev/kmsg returns one record (Documentation/ABI/testing/dev-kmsg)::

    <priority>,<sequence>,<timestamp_us>,<flags>[,...];<message>\\n
    [ KEY=value\\n ...]

The message is the text after the first ``;`` up to the newline; the
kernel escapes newlines and other non-printable bytes inside it as ``\\xNN``.
Each record is classified by the first line of each report, whose wording
is stable across kernel versions:

- ``soft_lockup``: ``watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [comm:pid]``
  (kernel/watchdog.c; the Go exporter's one pattern, "soft lockup");
- ``hard_lockup``: ``Watchdog detected hard LOCKUP on cpu 5`` (kernel/watchdog_perf.c,
  watchdog_hld.c before 6.6; the later panic line says "Hard LOCKUP" and is not counted again);
- ``hung_task``: ``INFO: task kworker/0:1:123 blocked for more than 120 seconds.`` (kernel/hung_task.c);
- ``rcu_stall``: ``rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:``,
  ``... self-detected stall on CPU``, ``... detected expedited stalls ...`` (kernel/rcu/tree_stall.h),
  and the tasks-RCU flavours (``rcu_tasks detected stalls on tasks:``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

SOFT_LOCKUP = "soft_lockup"
HARD_LOCKUP = "hard_lockup"
HUNG_TASK = "hung_task"
RCU_STALL = "rcu_stall"
KINDS = (SOFT_LOCKUP, HARD_LOCKUP, HUNG_TASK, RCU_STALL)

_HUNG_TASK = re.compile(rb"\btask \S.* blocked for more than \d+ seconds")
_RCU_STALL = re.compile(rb"\brcu_\w+ (?:self-)?detected (?:expedited )?stalls? on ")


class KmsgRecord(NamedTuple):
    #: syslog priority: facility << 3 | level (facility 0 is the kernel, 1 user space).
    priority: int
    sequence: int
    timestamp_us: int
    message: bytes


def parse_record(raw: bytes) -> KmsgRecord | None:
    """One record as read(2) returned it; None when it is not in the documented form."""
    header, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = header.split(b",")
    if len(fields) < 4 or not all(f.isdigit() and len(f) <= 20 for f in fields[:3]):
        return None
    message = rest.split(b"\n", 1)[0]
    return KmsgRecord(int(fields[0]), int(fields[1]), int(fields[2]), message)


def classify(message: bytes) -> str | None:
    """The kind of lockup or stall ``message`` reports, or None."""
    if b"soft lockup" in message:
        return SOFT_LOCKUP
    if b"hard LOCKUP" in message:
        return HARD_LOCKUP
    if b"blocked for more than" in message and _HUNG_TASK.search(message):
        return HUNG_TASK
    if b"detected" in message and _RCU_STALL.search(message):
        return RCU_STALL
    return None
