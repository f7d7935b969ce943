"""What an eBPF plugin declares (source, programs, attach candidates) and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

#: How a program is attached, best first (see docs/ebpf.md, "Attach kinds"):
#: ``tp_btf`` (BPF_PROG_TYPE_TRACING, BTF-typed raw tracepoint) and
#: ``raw_tracepoint`` run from the tracepoint itself and are skipped only when
#: the same program is already running on that CPU (and then counted in
#: ``recursion_misses``); ``tracepoint`` and ``kprobe`` go through a perf event
#: and are skipped whenever *any* perf-event BPF program runs on that CPU.
AttachMethod = Literal["tp_btf", "raw_tracepoint", "tracepoint", "kprobe"]


class BpfUnavailable(Exception):
    """eBPF cannot be used for this spec; ``str()`` is one human-readable line."""


@dataclass(frozen=True)
class _OnTracepoint:
    """What every way of reaching the tracepoint ``category:event`` with the C function ``fn`` has."""

    category: str
    event: str
    fn: str
    #: Macros of the spec's ``kernel_constants`` this variant reads: when the
    #: kernel's BTF lacks one, the variant is not compiled (its
    #: ``CME_WANT_<fn>`` stays undefined) and the next candidate is used.
    needs: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return f"{self.category}:{self.event}"


@dataclass(frozen=True)
class Tracepoint(_OnTracepoint):
    """A classic (stable) tracepoint through a perf event: ``fn`` gets the record tracefs describes."""

    @property
    def method(self) -> AttachMethod:
        return "tracepoint"


@dataclass(frozen=True)
class BtfTracepoint(_OnTracepoint):
    """A tracepoint reached as ``tp_btf``: ``fn(u64 *ctx)`` gets the tracepoint's raw arguments,
    typed by the kernel's BTF, so it may read struct fields with plain loads.

    ``fn`` takes ``u64 *ctx`` (not bcc's context types, which make bcc turn
    every field read into a helper call). Needs the kernel's BTF; attached
    with ``BPF_RAW_TRACEPOINT_OPEN`` (works from 5.5 on, where
    ``BPF_LINK_CREATE`` for this type only works from 6.10 on).
    """

    @property
    def method(self) -> AttachMethod:
        return "tp_btf"


@dataclass(frozen=True)
class RawTracepoint(_OnTracepoint):
    """A tracepoint reached as a raw tracepoint: ``fn(u64 *ctx)`` gets its raw arguments untyped.

    Pointers in the arguments are plain numbers to the verifier: fields are
    read with ``bpf_probe_read_kernel``. Needs no BTF.
    """

    @property
    def method(self) -> AttachMethod:
        return "raw_tracepoint"


@dataclass(frozen=True)
class Kprobe:
    """A kprobe (or kretprobe with ``ret=True``) on kernel ``function`` served by ``fn``."""

    function: str
    fn: str
    ret: bool = False
    #: Kernel constants this variant cannot be compiled without.
    needs: tuple[str, ...] = ()

    @property
    def method(self) -> AttachMethod:
        return "kprobe"

    @property
    def target(self) -> str:
        return f"{'kretprobe' if self.ret else 'kprobe'}:{self.function}"


AttachCandidate = BtfTracepoint | RawTracepoint | Tracepoint | Kprobe
#: Candidates that run from the tracepoint itself (no perf event).
TRACEPOINT_LINKS = (BtfTracepoint, RawTracepoint)


@dataclass(frozen=True)
class BtfOffset:
    """``-D<macro>=<byte offset of member in struct>``, from the running kernel's BTF.

    Left undefined when the kernel has no BTF or the member is missing, so
    the C can fall back (``#ifndef``) to ``offsetof`` over the kernel headers.
    """

    macro: str
    struct: str
    member: str


@dataclass(frozen=True)
class BtfEnum:
    """``-D<macro>=<value of an enumerator>``, from the running kernel's BTF (undefined when absent)."""

    macro: str
    enumerator: str


KernelConstant = BtfOffset | BtfEnum


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
    #: Struct offsets and enum values the loader helper looks up in the
    #: running kernel's BTF and passes to the compiler as -D macros.
    kernel_constants: tuple[KernelConstant, ...] = ()
    #: The programs share state keyed by what their attach kind sees (a
    #: request pointer, or a device and sector): all of them attach by the
    #: same method, the first one every program can use.
    attach_together: bool = False


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
    """Cumulative kernel accounting of one program.

    ``run_time_ns`` and ``run_cnt`` move only while ``kernel.bpf_stats_enabled=1``;
    ``recursion_misses`` (runs the kernel skipped because the program was
    already running on that CPU) is always counted, from kernel 5.12 on, and
    is None where the kernel does not report it.
    """

    role: str
    fn: str
    run_time_ns: int
    run_cnt: int
    recursion_misses: int | None = None
