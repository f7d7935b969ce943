"""Assemble one TCP-tracing eBPF object for the shared runtime.

Each hook (send, receive, retransmit, socket release) attaches to a
stable tracepoint where the running kernel has it - as ``tp_btf`` where the
kernel has BTF, else as a perf-event tracepoint - and to kprobes otherwise,
decided per hook: 6.1 has the tcp tracepoints but not ``sock_send_length``,
and should still use the tracepoints it has. The runtime picks the first
candidate that works; the send hook's kprobe fallback needs an entry and a
return probe, so it becomes two programs and is only declared on kernels
without the tracepoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace.buckets import bucket_function_c
from crusoe_metrics_exporter.sdk import (
    AttachCandidate,
    BpfSpec,
    BtfOffset,
    BtfTracepoint,
    Kprobe,
    ProgramSpec,
    Tracepoint,
)

#: Where the headers named by the programs' ``#include "tcptrace*.h"`` lines live.
HEADER_DIR = Path(__file__).resolve().parent


#: Struct offsets the programs read, from the running kernel's BTF (the C
#: has defaults for the ones every 64-bit kernel since 4.x shares).
KERNEL_CONSTANTS = (
    BtfOffset("SKC_DADDR_OFF", "sock_common", "skc_daddr"),
    BtfOffset("SKC_DPORT_OFF", "sock_common", "skc_dport"),
    BtfOffset("SKC_FAMILY_OFF", "sock_common", "skc_family"),
    BtfOffset("SKC_V6_DADDR_OFF", "sock_common", "skc_v6_daddr"),
    BtfOffset("SK_PROTOCOL_OFF", "sock", "sk_protocol"),
    BtfOffset("SKB_CB_OFF", "sk_buff", "cb"),
    BtfOffset("TCP_SKB_GSO_SEGS_OFF", "tcp_skb_cb", "tcp_gso_segs"),
)
#: What the tp_btf variants read with plain loads (the verifier checks each
#: against BTF, so a default is no use to them).
_BTF_NEEDS = ("SKC_FAMILY_OFF", "SK_PROTOCOL_OFF", "SKB_CB_OFF", "TCP_SKB_GSO_SEGS_OFF")


def _btf(category: str, event: str) -> BtfTracepoint:
    return BtfTracepoint(category, event, f"btf_{event}", needs=_BTF_NEEDS)


def _perf(category: str, event: str) -> Tracepoint:
    return Tracepoint(category, event, f"tracepoint__{category}__{event}")


@dataclass(frozen=True)
class Hook:
    """One thing the programs must see, and the ways of seeing it (best first)."""

    role: str
    tracepoints: tuple[BtfTracepoint, Tracepoint]
    kprobes: tuple[Kprobe, ...]


HOOKS: tuple[Hook, ...] = (
    Hook(
        "send",
        (_btf("sock", "sock_send_length"), _perf("sock", "sock_send_length")),
        (Kprobe("tcp_sendmsg", "kp_tcp_sendmsg"), Kprobe("tcp_sendmsg", "kr_tcp_sendmsg", ret=True)),
    ),
    Hook(
        "recv",
        (_btf("sock", "sock_recv_length"), _perf("sock", "sock_recv_length")),
        (Kprobe("tcp_cleanup_rbuf", "kp_tcp_cleanup_rbuf"),),
    ),
    Hook(
        "retransmit",
        (_btf("tcp", "tcp_retransmit_skb"), _perf("tcp", "tcp_retransmit_skb")),
        (Kprobe("tcp_retransmit_skb", "kp_tcp_retransmit_skb"),),
    ),
    # Socket release, not the TCP_CLOSE state change: the last receive of a
    # connection the peer closed can still be traced after TCP_CLOSE, and
    # per-socket state cleared then would be re-created for a dead socket.
    Hook(
        "close",
        (_btf("tcp", "tcp_destroy_sock"), _perf("tcp", "tcp_destroy_sock")),
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


def program_specs(send_tracepoint: bool, kinds: tuple[str, ...] = ("tp_btf", "tracepoint", "kprobe")
                  ) -> tuple[ProgramSpec, ...]:
    """Programs per hook: tp_btf first, then the perf-event tracepoint, then kprobes.

    ``kinds`` narrows the attach kinds: ``("kprobe",)`` declares just the
    fallbacks (the verifier test on kernels that cannot attach kprobes),
    benchmarks and tests compare one kind with another.
    """
    out: list[ProgramSpec] = []
    for hook in HOOKS:
        tracepoints = tuple(tp for tp in hook.tracepoints if tp.method in kinds)
        if hook.role == "send":
            if send_tracepoint and tracepoints:
                out.append(ProgramSpec("send", tracepoints))
            else:
                out.append(ProgramSpec("send", (hook.kprobes[0],)))
                out.append(ProgramSpec("send_return", (hook.kprobes[1],)))
            continue
        kprobes = hook.kprobes if "kprobe" in kinds else ()
        candidates: tuple[AttachCandidate, ...] = (*tracepoints, *kprobes)
        out.append(ProgramSpec(hook.role, candidates))
    return tuple(out)


def bpf_spec(
    name: str,
    body: str,
    bounds_seconds: Sequence[float],
    *,
    defines: Mapping[str, int],
    send_tracepoint: bool,
    kinds: tuple[str, ...] = ("tp_btf", "tracepoint", "kprobe"),
) -> BpfSpec:
    cflags = [f"-D{k}={int(v)}" for k, v in sorted(defines.items())]
    return BpfSpec(
        name=name,
        source=build_source(body, bounds_seconds),
        cflags=tuple(cflags),
        programs=program_specs(send_tracepoint, kinds),
        kernel_constants=KERNEL_CONSTANTS,
    )
