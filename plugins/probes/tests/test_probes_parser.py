"""ONC-RPC encoding and reply verdicts (pure functions)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from crusoe_metrics_exporter.plugins.probes.parser import REASONS, check_null_reply, fragment_header, null_call


def test_null_call_layout_matches_rfc5531_and_the_seed() -> None:
    # The seed's 44-byte NFSv4 NULL call with XID 1, byte for byte.
    expected = bytes.fromhex(
        "80000028" "00000001" "00000000" "00000002" "000186a3" "00000004" "00000000" "00000000" "00000000"
        "00000000" "00000000"
    )
    assert null_call(1, 4) == expected
    assert null_call(0xDEADBEEF, 3)[4:8] == bytes.fromhex("deadbeef")
    assert struct.unpack(">I", null_call(7, 3)[20:24]) == (3,)


def test_fragment_header() -> None:
    assert fragment_header(bytes.fromhex("80000028")) == (True, 40)
    assert fragment_header(bytes.fromhex("00000010")) == (False, 16)


def _accepted(xid: int, stat: int, verf: bytes = b"", extra: bytes = b"") -> bytes:
    return struct.pack(">5I", xid, 1, 0, 0, len(verf)) + verf + struct.pack(">I", stat) + extra


def test_verdicts() -> None:
    assert check_null_reply(_accepted(9, 0), 9).ok
    # A verifier body is skipped with its padding.
    assert check_null_reply(_accepted(9, 0, verf=b"abcde\x00\x00\x00"), 9).ok
    assert check_null_reply(_accepted(8, 0), 9).reason == "bad_xid"
    mismatch = check_null_reply(_accepted(9, 2, extra=struct.pack(">2I", 2, 3)), 9)
    assert (mismatch.ok, mismatch.reason, mismatch.mismatch) == (False, "prog_mismatch", (2, 3))
    assert check_null_reply(_accepted(9, 1), 9).reason == "prog_unavail"
    assert check_null_reply(_accepted(9, 5), 9).reason == "system_err"
    assert check_null_reply(_accepted(9, 77), 9).reason == "garbage"
    assert check_null_reply(struct.pack(">5I", 9, 1, 1, 1, 1), 9).reason == "denied"
    assert check_null_reply(struct.pack(">3I", 9, 0, 0), 9).reason == "not_reply"
    assert check_null_reply(b"short", 9).reason == "garbage"
    assert check_null_reply(_accepted(9, 0)[:-4], 9).reason == "garbage"
    assert check_null_reply(struct.pack(">5I", 9, 1, 0, 0, 4000) + b"\x00" * 8, 9).reason == "garbage"


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2**32 - 1))
def test_any_bytes_get_a_bounded_verdict(data: bytes, xid: int) -> None:
    verdict = check_null_reply(data, xid)
    assert verdict.ok or verdict.reason in REASONS
