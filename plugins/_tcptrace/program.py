"""Assemble one TCP-tracing eBPF program: shared filter + plugin body + fallback.

Each of the four hooks (send, receive, retransmit, close) is compiled as a
stable tracepoint where the running kernel has it and as kprobes otherwise,
decided per hook: a 5.x kernel has the tcp/sock state tracepoints but not
``sock_send_length``, and should still use the tracepoints it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crusoe_metrics_exporter.plugins._tcptrace.buckets import bucket_function_c

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class KprobeVariant:
    function: str
    fn: str
    ret: bool = False


@dataclass(frozen=True)
class Hook:
    """One thing the programs must see, and the two ways of seeing it."""

    role: str
    tracepoint: tuple[str, str]
    tracepoint_fn: str
    kprobes: tuple[KprobeVariant, ...]

    @property
    def tp_define(self) -> str:
        return f"-DTT_TP_{self.role.upper()}"

    @property
    def kp_define(self) -> str:
        return f"-DTT_KP_{self.role.upper()}"


HOOKS: tuple[Hook, ...] = (
    Hook(
        "send",
        ("sock", "sock_send_length"),
        "tracepoint__sock__sock_send_length",
        (KprobeVariant("tcp_sendmsg", "kp_tcp_sendmsg"), KprobeVariant("tcp_sendmsg", "kr_tcp_sendmsg", ret=True)),
    ),
    Hook(
        "recv",
        ("sock", "sock_recv_length"),
        "tracepoint__sock__sock_recv_length",
        (KprobeVariant("tcp_cleanup_rbuf", "kp_tcp_cleanup_rbuf"),),
    ),
    Hook(
        "retransmit",
        ("tcp", "tcp_retransmit_skb"),
        "tracepoint__tcp__tcp_retransmit_skb",
        (KprobeVariant("tcp_retransmit_skb", "kp_tcp_retransmit_skb"),),
    ),
    Hook(
        "close",
        ("sock", "inet_sock_set_state"),
        "tracepoint__sock__inet_sock_set_state",
        (KprobeVariant("tcp_set_state", "kp_tcp_set_state"),),
    ),
)


def read_source(name: str) -> str:
    return (_HERE / name).read_text()


def build_source(body: str, bounds_seconds: Sequence[float]) -> str:
    """Filter header, generated bucket function, the plugin's body, kprobe fallback."""
    return "\n".join(
        (
            read_source("tcptrace.h"),
            bucket_function_c(bounds_seconds),
            body,
            read_source("tcptrace_kprobes.h"),
        )
    )


def build_cflags(
    defines: Mapping[str, int],
    offsets_cflags: Sequence[str],
    tracepoint_roles: Sequence[str],
    kprobe_roles: Sequence[str],
) -> tuple[str, ...]:
    flags = [f"-D{k}={int(v)}" for k, v in sorted(defines.items())]
    flags.extend(offsets_cflags)
    by_role = {h.role: h for h in HOOKS}
    flags.extend(by_role[r].tp_define for r in tracepoint_roles)
    flags.extend(by_role[r].kp_define for r in kprobe_roles)
    return tuple(flags)


def choose_methods(has_tracepoint: Mapping[tuple[str, str], bool]) -> tuple[list[str], list[str]]:
    """Roles served by tracepoints and roles that need kprobes, for this kernel."""
    tps = [h.role for h in HOOKS if has_tracepoint.get(h.tracepoint, False)]
    kps = [h.role for h in HOOKS if h.role not in tps]
    return tps, kps
