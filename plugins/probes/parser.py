"""ONC-RPC (RFC 5531) NULL call encoding and reply checking, over TCP record marking.

Pure functions over bytes, so every verdict can be tested without a socket.
The seed accepted any reply at all; here a reply only counts when it carries
our XID, is MSG_ACCEPTED and has accept_stat SUCCESS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

NFS_PROGRAM = 100003
RPC_VERSION = 2
NULL_PROCEDURE = 0

CALL = 0
REPLY = 1
MSG_ACCEPTED = 0
MSG_DENIED = 1
AUTH_NONE = 0

#: RFC 5531 accept_stat values and the failure reason we report for each.
ACCEPT_STAT_REASONS = {
    1: "prog_unavail",
    2: "prog_mismatch",
    3: "proc_unavail",
    4: "garbage_args",
    5: "system_err",
}

LAST_FRAGMENT = 0x8000_0000
#: A NULL reply is a few dozen bytes; anything announcing more is not a sane
#: NFS server, and we must not allocate what a broken peer asks for.
MAX_RECORD_BYTES = 64 * 1024

#: Every failure reason this module can return (bounded label values).
REASONS = (
    "bad_xid",
    "not_reply",
    "denied",
    "garbage",
    *ACCEPT_STAT_REASONS.values(),
)


def null_call(xid: int, version: int) -> bytes:
    """A complete NULL call for the NFS program, with its record marker."""
    body = struct.pack(
        ">10I",
        xid & 0xFFFF_FFFF,
        CALL,
        RPC_VERSION,
        NFS_PROGRAM,
        version,
        NULL_PROCEDURE,
        AUTH_NONE,
        0,  # credential body length
        AUTH_NONE,
        0,  # verifier body length
    )
    return struct.pack(">I", LAST_FRAGMENT | len(body)) + body


def fragment_header(header: bytes) -> tuple[bool, int]:
    """Decode a 4-byte record marker: (last fragment?, fragment length)."""
    (word,) = struct.unpack(">I", header)
    return bool(word & LAST_FRAGMENT), word & ~LAST_FRAGMENT & 0xFFFF_FFFF


@dataclass(frozen=True)
class ReplyVerdict:
    ok: bool
    reason: str = ""
    #: For prog_mismatch: the versions the server says it supports.
    mismatch: tuple[int, int] | None = None


def check_null_reply(record: bytes, xid: int) -> ReplyVerdict:
    """Judge a reassembled reply record against the call we sent."""
    if len(record) < 12:
        return ReplyVerdict(False, "garbage")
    reply_xid, msg_type, reply_stat = struct.unpack_from(">3I", record, 0)
    if msg_type != REPLY:
        return ReplyVerdict(False, "not_reply")
    if reply_xid != xid & 0xFFFF_FFFF:
        return ReplyVerdict(False, "bad_xid")
    if reply_stat == MSG_DENIED:
        return ReplyVerdict(False, "denied")
    if reply_stat != MSG_ACCEPTED:
        return ReplyVerdict(False, "garbage")
    # Accepted reply: verifier (flavor, opaque body padded to 4), then accept_stat.
    if len(record) < 20:
        return ReplyVerdict(False, "garbage")
    _flavor, verf_len = struct.unpack_from(">2I", record, 12)
    if verf_len > 400:  # RFC 5531 caps opaque_auth bodies at 400 bytes
        return ReplyVerdict(False, "garbage")
    offset = 20 + (verf_len + 3) // 4 * 4
    if len(record) < offset + 4:
        return ReplyVerdict(False, "garbage")
    (accept_stat,) = struct.unpack_from(">I", record, offset)
    if accept_stat == 0:
        return ReplyVerdict(True)
    reason = ACCEPT_STAT_REASONS.get(accept_stat, "garbage")
    mismatch = None
    if reason == "prog_mismatch" and len(record) >= offset + 12:
        low, high = struct.unpack_from(">2I", record, offset + 4)
        mismatch = (low, high)
    return ReplyVerdict(False, reason, mismatch)
