"""Recognising the kernel's lockup and stall reports in /dev/kmsg records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.kernel_lockups.parser import (
    HARD_LOCKUP,
    HUNG_TASK,
    RCU_STALL,
    SOFT_LOCKUP,
    KmsgRecord,
    classify,
    parse_record,
)

# Records in the /dev/kmsg format with the kernel's own wording (the format
# strings of kernel/watchdog.c, watchdog_perf.c / watchdog_hld.c,
# hung_task.c and rcu/tree_stall.h, filled in), across kernel versions.
REPORTS = [
    (SOFT_LOCKUP, b"0,1402,81620307,-;watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:118]\n"),
    (SOFT_LOCKUP, b"0,77,10245000,-;BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]\n"),
    (SOFT_LOCKUP, b"4,12,300,-;BUG: soft lockup detected on CPU#3!\n"),  # 2.6-era wording
    (HARD_LOCKUP, b"0,2210,120000000,-;watchdog: CPU5: Watchdog detected hard LOCKUP on cpu 5\n"),
    (HARD_LOCKUP, b"0,2210,120000000,-;NMI watchdog: Watchdog detected hard LOCKUP on cpu 1\n"),
    (HUNG_TASK, b"3,5521,2460112233,-;INFO: task kworker/u8:2:1234 blocked for more than 120 seconds.\n"
                b" SUBSYSTEM=block\n"),
    (HUNG_TASK, b"3,901,300000000,-;INFO: task jbd2/vda1-8:163 blocked for more than 2 seconds.\n"),
    (RCU_STALL, b"3,4410,98000000,-;rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"),
    (RCU_STALL, b"3,4410,98000000,-;rcu: INFO: rcu_sched self-detected stall on CPU\n"),
    (RCU_STALL, b"3,4410,98000000,-;INFO: rcu_sched detected stalls on CPUs/tasks: { 2} (detected by 0, t=5252)\n"),
    (RCU_STALL, b"3,4410,98000000,-;rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 3-... }\n"),
    (RCU_STALL, b"4,88,9000,-;INFO: rcu_tasks detected stalls on tasks:\n"),
    # Injected from user space (facility 1): counted, as the Go exporter did.
    (SOFT_LOCKUP, b"12,3001,555,-;test: BUG: soft lockup - CPU#0 stuck for 0s! [synthetic:1]\n"),
]

QUIET = [
    b"0,1403,81620400,-;Kernel panic - not syncing: softlockup: hung tasks\n",
    b"0,2211,120000001,-;Kernel panic - not syncing: Hard LOCKUP\n",
    b"6,1,0,-;NMI watchdog: Enabled. Permanently consumes one hw-PMU counter.\n",
    b"6,2,0,-;watchdog: Disabling watchdog on nohz_full cores by default\n",
    b"6,3,0,-;rcu: RCU calculated value of scheduler-enlistment delay is 25 jiffies.\n",
    b"3,5522,2460112300,-;\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.\n",
    b"3,5523,2460112300,-;Future hung task reports are suppressed, see sysctl kernel.hung_task_warnings\n",
    b"6,9,0,-;rcu: \tRCU dyntick-idle grace-period acceleration is enabled.\n",
    b"6,10,0,-;loop0: detected capacity change from 0 to 131072\n",
    # The pattern only in a continuation line (a dictionary entry), not the message.
    b"6,11,0,-;usb 1-1: new device\n NOTE=soft lockup\n",
]


@pytest.mark.parametrize(("kind", "raw"), REPORTS)
def test_reports_are_recognised(kind: str, raw: bytes) -> None:
    record = parse_record(raw)
    assert record is not None
    assert classify(record.message) == kind


@pytest.mark.parametrize("raw", QUIET)
def test_other_messages_are_not_counted(raw: bytes) -> None:
    record = parse_record(raw)
    assert record is not None
    assert classify(record.message) is None


def test_record_fields() -> None:
    assert parse_record(b"6,339,5140900,-,caller=T1;hello; world\n SUBSYSTEM=x\n") == KmsgRecord(
        6, 339, 5140900, b"hello; world")
    assert parse_record(b"no separator") is None
    assert parse_record(b"6,339;too few fields") is None
    assert parse_record(b"6,x,1,-;not a number") is None
    assert parse_record(b"-6,1,1,-;signed") is None


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(raw: bytes) -> None:
    record = parse_record(raw)
    if record is not None:
        assert b"\n" not in record.message
        classify(record.message)
