"""What an eBPF plugin declares (source, programs, attach candidates) and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

AttachMethod = Literal["tracepoint", "kprobe"]


class BpfUnavailable(Exception):
    """eBPF cannot be used for this spec; ``str()`` is one human-readable line."""


@dataclass(frozen=True)
class Tracepoint:
    """A classic (stable) tracepoint ``category:event`` served by the C function ``fn``."""

    category: str
    event: str
    fn: str

    @property
    def method(self) -> AttachMethod:
        return "tracepoint"

    @property
    def target(self) -> str:
        return f"{self.category}:{self.event}"


@dataclass(frozen=True)
class Kprobe:
    """A kprobe (or kretprobe with ``ret=True``) on kernel ``function`` served by ``fn``."""

    function: str
    fn: str
    ret: bool = False

    @property
    def method(self) -> AttachMethod:
        return "kprobe"

    @property
    def target(self) -> str:
        return f"{'kretprobe' if self.ret else 'kprobe'}:{self.function}"


AttachCandidate = Tracepoint | Kprobe


@dataclass(frozen=True)
class ProgramSpec:
    """One logical program (``role``, e.g. "issue") and the ways to attach it, best first."""

    role: str
    candidates: tuple[AttachCandidate, ...]


@dataclass(frozen=True)
class BpfSpec:
    """A plugin's eBPF object: bcc C source, extra compiler flags, and its programs."""

    name: str
    source: str
    cflags: tuple[str, ...] = ()
    programs: tuple[ProgramSpec, ...] = ()


class ProgramStatus(NamedTuple):
    """How one program ended up: which variant, attached or not, and its kernel id."""

    role: str
    fn: str
    method: AttachMethod
    target: str
    attached: bool
    prog_id: int
    #: Why the program is not attached (empty when it is, or when not asked to attach).
    error: str = ""


class ProgramStats(NamedTuple):
    """Cumulative kernel accounting of one program (needs ``kernel.bpf_stats_enabled=1``)."""

    role: str
    fn: str
    run_time_ns: int
    run_cnt: int
