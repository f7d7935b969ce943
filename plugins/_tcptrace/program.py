"""Assemble one TCP-tracing eBPF object for the shared runtime.

Each hook (send, receive, retransmit, socket release) attaches to a
stable tracepoint where the running kernel has it and to kprobes otherwise,
decided per hook: a 5.x kernel has the tcp/sock state tracepoints but not
``sock_send_length``, and should still use the tracepoints it has. The
runtime picks the first candidate that works; the send hook's kprobe
fallback needs an entry and a return probe, so it becomes two programs and
is only declared on kernels without the tracepoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace.buckets import bucket_function_c
from crusoe_metrics_exporter.sdk import AttachCandidate, BpfSpec, Kprobe, ProgramSpec, Tracepoint

#: Where the headers named by the programs' ``#include "tcptrace*.h"`` lines live.
HEADER_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Hook:
    """One thing the programs must see, and the ways of seeing it."""

    role: str
    tracepoint: Tracepoint
    kprobes: tuple[Kprobe, ...]


HOOKS: tuple[Hook, ...] = (
    Hook(
        "send",
        Tracepoint("sock", "sock_send_length", "tracepoint__sock__sock_send_length"),
        (Kprobe("tcp_sendmsg", "kp_tcp_sendmsg"), Kprobe("tcp_sendmsg", "kr_tcp_sendmsg", ret=True)),
    ),
    Hook(
        "recv",
        Tracepoint("sock", "sock_recv_length", "tracepoint__sock__sock_recv_length"),
        (Kprobe("tcp_cleanup_rbuf", "kp_tcp_cleanup_rbuf"),),
    ),
    Hook(
        "retransmit",
        Tracepoint("tcp", "tcp_retransmit_skb", "tracepoint__tcp__tcp_retransmit_skb"),
        (Kprobe("tcp_retransmit_skb", "kp_tcp_retransmit_skb"),),
    ),
    # Socket release, not the TCP_CLOSE state change: the last receive of a
    # connection the peer closed can still be traced after TCP_CLOSE, and
    # per-socket state cleared then would be re-created for a dead socket.
    Hook(
        "close",
        Tracepoint("tcp", "tcp_destroy_sock", "tracepoint__tcp__tcp_destroy_sock"),
        (Kprobe("tcp_v4_destroy_sock", "kp_tcp_v4_destroy_sock"),),
    ),
)

_INCLUDE = re.compile(r'^#include "(tcptrace[a-z_]*\.h)"\s*$', re.MULTILINE)


def build_source(body: str, bounds_seconds: Sequence[float]) -> str:
    """The generated bucket function, then the plugin's program with the shared headers pasted in.

    The headers are pasted, not left to the compiler: bcc rewrites map calls
    and generates TRACEPOINT_PROBE argument structs only in the main text.
    """

    def paste(match: re.Match[str]) -> str:
        return (HEADER_DIR / match.group(1)).read_text()

    return bucket_function_c(bounds_seconds) + "\n" + _INCLUDE.sub(paste, body)


def program_specs(send_tracepoint: bool, kprobes_only: bool = False) -> tuple[ProgramSpec, ...]:
    """Programs per hook: tracepoint first, kprobe fallback second.

    ``kprobes_only`` declares just the fallbacks (the verifier test on kernels
    that cannot attach kprobes).
    """
    out: list[ProgramSpec] = []
    for hook in HOOKS:
        if hook.role == "send":
            if send_tracepoint and not kprobes_only:
                out.append(ProgramSpec("send", (hook.tracepoint,)))
            else:
                out.append(ProgramSpec("send", (hook.kprobes[0],)))
                out.append(ProgramSpec("send_return", (hook.kprobes[1],)))
            continue
        candidates: tuple[AttachCandidate, ...] = hook.kprobes if kprobes_only else (hook.tracepoint, *hook.kprobes)
        out.append(ProgramSpec(hook.role, candidates))
    return tuple(out)


def bpf_spec(
    name: str,
    body: str,
    bounds_seconds: Sequence[float],
    *,
    defines: Mapping[str, int],
    offset_cflags: Sequence[str],
    send_tracepoint: bool,
    kprobes_only: bool = False,
) -> BpfSpec:
    cflags = [f"-D{k}={int(v)}" for k, v in sorted(defines.items())]
    cflags.extend(offset_cflags)
    return BpfSpec(
        name=name,
        source=build_source(body, bounds_seconds),
        cflags=tuple(cflags),
        programs=program_specs(send_tracepoint, kprobes_only),
    )
