"""Load a plugin's eBPF object: choose variants, compile in the helper, attach here, read maps.

The exporter process only ever holds file descriptors: programs and maps
come from the loader helper (see :mod:`.loader`), attaching is one
``BPF_RAW_TRACEPOINT_OPEN`` (``tp_btf``, raw tracepoints) or a
``perf_event_open`` plus two ioctls (tracepoints, kprobes), and map access
is plain ``bpf(2)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

from crusoe_metrics_exporter.ebpf import btf, kernel, syscalls
from crusoe_metrics_exporter.ebpf.cache import DIR_NAME as COMPILE_CACHE_DIR
from crusoe_metrics_exporter.ebpf.headers import HeaderChoice, HeadersUnavailable, resolve_headers
from crusoe_metrics_exporter.ebpf.loader import DEFAULT_TIMEOUT, LoaderError, run_loader
from crusoe_metrics_exporter.ebpf.spec import (
    TRACEPOINT_LINKS,
    AttachCandidate,
    BpfSpec,
    BpfUnavailable,
    BtfEnum,
    BtfTracepoint,
    Kprobe,
    ProgramStats,
    ProgramStatus,
    RawTracepoint,
    Tracepoint,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/crusoe-metrics-exporter")
STATE_DIR_ENV = "CRUSOE_EXPORTER_STATE_DIR"
_FN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def want_macro(fn: str) -> str:
    """The macro the runtime defines for each variant it compiles (``CME_WANT_<fn>``).

    Sources wrap every attach variant in ``#ifdef CME_WANT_<fn>``: a
    TRACEPOINT_PROBE for a tracepoint this kernel lacks would otherwise break
    compilation of the whole object, and unused in-flight maps cost kernel memory.
    """
    return f"CME_WANT_{fn}"


class BpfMap:
    """A kernel map reached by its file descriptor."""

    def __init__(self, name: str, fd: int) -> None:
        info = syscalls.fdinfo(fd)
        self.name = name
        self.fd = fd
        self.map_type = int(info.get("map_type", "0"))
        self.key_size = int(info.get("key_size", "0"))
        self.value_size = int(info.get("value_size", "0"))
        self.max_entries = int(info.get("max_entries", "0"))
        self.map_id = int(info.get("map_id", "0"))

    def keys(self) -> list[bytes]:
        return syscalls.map_keys(self.fd, self.key_size, limit=max(self.max_entries, 1) * 2)

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value); entries deleted during the walk are skipped."""
        out = []
        for key in self.keys():
            value = syscalls.map_lookup(self.fd, key, self.value_size)
            if value is not None:
                out.append((key, value))
        return out

    def lookup(self, key: bytes) -> bytes | None:
        return syscalls.map_lookup(self.fd, key, self.value_size)

    def update(self, key: bytes, value: bytes) -> None:
        if len(key) != self.key_size or len(value) != self.value_size:
            raise ValueError(f"map {self.name}: key/value must be {self.key_size}/{self.value_size} bytes")
        syscalls.map_update(self.fd, key, value)

    def delete(self, key: bytes) -> bool:
        return syscalls.map_delete(self.fd, key)


@dataclass
class _Program:
    role: str
    candidate: AttachCandidate
    prog_fd: int
    prog_id: int
    #: The descriptor whose lifetime is the attachment: a raw tracepoint
    #: link, or the perf event of a tracepoint or kprobe (-1: not attached).
    link_fd: int = -1
    error: str = ""

    def status(self) -> ProgramStatus:
        c = self.candidate
        return ProgramStatus(self.role, c.fn, c.method, c.target, self.link_fd >= 0, self.prog_id, self.error)

    def detach(self) -> None:
        if self.link_fd < 0:
            return
        if not isinstance(self.candidate, TRACEPOINT_LINKS):
            syscalls.perf_event_disable(self.link_fd)
        _close(self.link_fd)
        self.link_fd = -1


@dataclass
class LoadedBpf:
    """A loaded (and usually attached) eBPF object owned by the exporter process."""

    spec: BpfSpec
    headers: HeaderChoice
    compile_seconds: float = 0.0
    startup_seconds: float = 0.0
    #: How the compile cache served this load: hit, stored (compiled and kept), miss (compiled, not kept).
    compile_cache: str = ""
    _programs: list[_Program] = field(default_factory=list)
    _maps: dict[str, BpfMap] = field(default_factory=dict)
    #: Kernel constants (struct offsets, enum values) the loader found in BTF, by macro.
    constants: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    @property
    def programs(self) -> list[ProgramStatus]:
        return [p.status() for p in self._programs]

    def map(self, name: str) -> BpfMap:
        try:
            return self._maps[name]
        except KeyError:
            raise KeyError(f"{self.spec.name}: no map named {name!r} (have {', '.join(sorted(self._maps))})") from None

    def stats(self, *, include_detached: bool = False) -> dict[str, ProgramStats]:
        """Per attached program (by role): the kernel's run time, run count and skipped runs.

        Run time and count only move while ``kernel.bpf_stats_enabled=1``;
        skipped runs (``recursion_misses``) are counted regardless.
        ``include_detached`` adds programs :meth:`detach` took off (a
        benchmark proves "off" by their run count standing still).
        """
        out: dict[str, ProgramStats] = {}
        with self._lock:
            for p in self._programs:
                if self._closed or p.prog_fd < 0 or (p.link_fd < 0 and not include_detached):
                    continue
                try:
                    info = syscalls.prog_info(p.prog_fd)
                except OSError:
                    continue
                out[p.role] = ProgramStats(
                    p.role, p.candidate.fn, info.get("run_time_ns", 0), info.get("run_cnt", 0),
                    info.get("recursion_misses"),
                )
        return out

    def detach(self) -> None:
        """Detach every program, keeping programs and maps (benchmarks measure "off" this way)."""
        with self._lock:
            for p in self._programs:
                p.detach()

    def reattach(self) -> None:
        """Attach every detached program again, by the method it was attached with."""
        with self._lock:
            if self._closed:
                raise BpfUnavailable(f"{self.spec.name}: closed")
            tracefs = kernel.tracefs_root()
            if tracefs is None:
                raise BpfUnavailable("tracefs is not mounted")
            for p in self._programs:
                if p.link_fd < 0:
                    p.link_fd = _attach(p.candidate, p.prog_fd, tracefs)

    def details(self) -> dict[str, str]:
        """Facts for ``plugins``/``/``: attach method per program and headers in use."""
        out = {f"attach.{p.role}": f"{p.candidate.method} {p.candidate.target}" for p in self._programs}
        methods = sorted({p.candidate.method for p in self._programs if p.link_fd >= 0})
        if methods:
            out["attach_method"] = "+".join(methods)
        out["kernel_headers"] = self.headers.description
        out["startup_seconds"] = f"{self.startup_seconds:.2f}"
        if self.compile_cache:
            out["compile_cache"] = self.compile_cache
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for p in self._programs:
                p.detach()
                if p.prog_fd >= 0:
                    _close(p.prog_fd)
                    p.prog_fd = -1
            for m in self._maps.values():
                _close(m.fd)

    def __enter__(self) -> LoadedBpf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class _Probeable:
    """The spec's kprobe functions this kernel can probe, looked up on the first question.

    Finding them means reading all of kallsyms (tens of milliseconds); on a
    kernel without kprobes, or when no kprobe candidate is reached, nobody asks.
    """

    def __init__(self, spec: BpfSpec, tracefs: Path) -> None:
        self._names = {c.function for p in spec.programs for c in p.candidates if isinstance(c, Kprobe)}
        self._tracefs = tracefs
        self._found: set[str] | None = None

    def __contains__(self, function: object) -> bool:
        if self._found is None:
            self._found = kernel.traceable_functions(self._names, self._tracefs) if self._names else set()
        return function in self._found


def _viable(candidate: AttachCandidate, tracefs: Path, kprobe_functions: Container[str]) -> str | None:
    """None when this kernel offers the candidate's attach point, else why not."""
    if candidate.needs and not kernel.btf_available():
        # Its kernel constants can only come from BTF.
        return f"{candidate.method} {candidate.target} reads struct fields at BTF offsets; the kernel has no BTF"
    if isinstance(candidate, (Tracepoint, RawTracepoint, BtfTracepoint)):
        if kernel.tracepoint_id(candidate.category, candidate.event, tracefs) is None:
            return f"no tracepoint {candidate.target}"
        if isinstance(candidate, BtfTracepoint):
            if not kernel.btf_available():
                return "kernel without BTF (/sys/kernel/btf/vmlinux)"
            if not btf.mentions(f"btf_trace_{candidate.event}"):
                return f"kernel BTF has no type for tracepoint {candidate.target}"
        return None
    if kernel.kprobe_pmu_type() is None:
        return "kernel without kprobe support"
    if candidate.function not in kprobe_functions:
        return f"kernel function {candidate.function} cannot be probed"
    return None


def attach_plan(spec: BpfSpec) -> dict[str, AttachCandidate | str]:
    """Per program role, the candidate :func:`load` would try first, or why none fits.

    Feature detection only (no compiling, no privileges needed beyond reading
    tracefs): what ``plugins`` shows before anything is loaded.
    """
    tracefs = kernel.tracefs_root()
    if tracefs is None:
        return {p.role: "tracefs is not mounted" for p in spec.programs}
    probeable = _Probeable(spec, tracefs)
    plan: dict[str, AttachCandidate | str] = {}
    if spec.attach_together and spec.programs:
        reasons = []
        for method in dict.fromkeys(c.method for c in spec.programs[0].candidates):
            picks = [next((c for c in p.candidates if c.method == method), None) for p in spec.programs]
            problems = [why for c in picks if c is not None for why in [_viable(c, tracefs, probeable)] if why]
            if all(c is not None for c in picks) and not problems:
                return {p.role: c for p, c in zip(spec.programs, picks, strict=True) if c is not None}
            reasons.append(f"{method}: {'; '.join(problems) or 'not offered for every program'}")
        return {p.role: "; ".join(reasons) for p in spec.programs}
    for program in spec.programs:
        reasons = []
        for candidate in program.candidates:
            why_not = _viable(candidate, tracefs, probeable)
            if why_not is None:
                plan[program.role] = candidate
                break
            reasons.append(why_not)
        else:
            plan[program.role] = "; ".join(reasons)
    return plan


def plan_details(plan: dict[str, AttachCandidate | str]) -> dict[str, str]:
    """``attach_method`` and ``attach.<role>`` facts for ``plugins``, from :func:`attach_plan`."""
    out = {}
    methods = set()
    for role, choice in plan.items():
        if isinstance(choice, str):
            out[f"attach.{role}"] = f"none ({choice})"
        else:
            out[f"attach.{role}"] = f"{choice.method} {choice.target}"
            methods.add(choice.method)
    out["attach_method"] = "+".join(sorted(methods)) if methods else "none"
    return out


_PROG_TYPES: dict[type, int] = {
    BtfTracepoint: syscalls.BPF_PROG_TYPE_TRACING,
    RawTracepoint: syscalls.BPF_PROG_TYPE_RAW_TRACEPOINT,
    Tracepoint: syscalls.BPF_PROG_TYPE_TRACEPOINT,
    Kprobe: syscalls.BPF_PROG_TYPE_KPROBE,
}


def _function_request(candidate: AttachCandidate) -> dict[str, object]:
    out: dict[str, object] = {
        "fn": candidate.fn,
        "prog_type": _PROG_TYPES[type(candidate)],
        "macro": want_macro(candidate.fn),
        "needs": list(candidate.needs),
    }
    if isinstance(candidate, BtfTracepoint):
        out["btf_event"] = candidate.event
    return out


def _constant_request(spec: BpfSpec) -> list[dict[str, str]]:
    return [
        {"macro": c.macro, "enumerator": c.enumerator} if isinstance(c, BtfEnum)
        else {"macro": c.macro, "struct": c.struct, "member": c.member}
        for c in spec.kernel_constants
    ]


def _attach(candidate: AttachCandidate, prog_fd: int, tracefs: Path) -> int:
    if isinstance(candidate, BtfTracepoint):
        return syscalls.raw_tracepoint_open(prog_fd, None)
    if isinstance(candidate, RawTracepoint):
        return syscalls.raw_tracepoint_open(prog_fd, candidate.event)
    if isinstance(candidate, Tracepoint):
        tp_id = kernel.tracepoint_id(candidate.category, candidate.event, tracefs)
        if tp_id is None:
            raise OSError(f"tracepoint {candidate.target} disappeared")
        perf_fd = syscalls.perf_event_open(syscalls.PERF_TYPE_TRACEPOINT, tp_id)
    else:
        pmu = kernel.kprobe_pmu_type()
        if pmu is None:
            raise OSError("kernel without kprobe support")
        config = kernel.kretprobe_config_bit() if candidate.ret else 0
        name_buf, name_addr = syscalls.keep_cstring(candidate.function)
        perf_fd = syscalls.perf_event_open(pmu, config, name_addr)
        del name_buf
    try:
        syscalls.perf_event_attach_bpf(perf_fd, prog_fd)
    except OSError:
        _close(perf_fd)
        raise
    return perf_fd


def _validate(spec: BpfSpec) -> None:
    for program in spec.programs:
        if not program.candidates:
            raise BpfUnavailable(f"{spec.name}: program {program.role} has no attach candidates")
        for c in program.candidates:
            if not _FN_NAME.match(c.fn):
                raise BpfUnavailable(f"{spec.name}: {c.fn!r} is not a C function name")
    macros = {c.macro for c in spec.kernel_constants}
    for constant in spec.kernel_constants:
        if not _FN_NAME.match(constant.macro):
            raise BpfUnavailable(f"{spec.name}: {constant.macro!r} is not a C macro name")
    for program in spec.programs:
        for c in program.candidates:
            unknown = sorted(set(c.needs) - macros)
            if unknown:
                raise BpfUnavailable(f"{spec.name}: {c.fn} needs {', '.join(unknown)}, not a declared kernel constant")


def load(
    spec: BpfSpec,
    state_dir: Path | None = None,
    *,
    attach: bool = True,
    mount_tracefs: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoadedBpf:
    """Compile ``spec`` in the helper, then attach each program by the first candidate that works.

    With ``attach=False`` every candidate (kprobe fallbacks included, whether
    or not this kernel could attach them) is loaded through the verifier and
    left unattached: that is how the fallback variants are tested on kernels
    that only offer tracepoints. Raises :class:`BpfUnavailable` with one line.
    """
    started = time.monotonic()
    _validate(spec)
    problem = kernel.privilege_problem() or kernel.syscall_filter_problem()
    if problem:
        raise BpfUnavailable(problem)
    tracefs, tracefs_detail = kernel.ensure_tracefs(mount_tracefs)
    if tracefs is None:
        raise BpfUnavailable(tracefs_detail)
    try:
        headers = resolve_headers(state_dir or default_state_dir())
    except HeadersUnavailable as exc:
        raise BpfUnavailable(str(exc)) from None

    probeable = _Probeable(spec, tracefs)
    to_load: list[tuple[str, AttachCandidate]] = []
    for program in spec.programs:
        reasons = []
        for candidate in program.candidates:
            why_not = _viable(candidate, tracefs, probeable)
            # Without attaching, kprobe variants only need the verifier, not
            # the function (but their kernel constants, from BTF); tracepoint
            # variants still need the tracepoint's format to compile.
            verify_kprobe = (not attach and isinstance(candidate, Kprobe)
                             and (not candidate.needs or kernel.btf_available()))
            if why_not is None or verify_kprobe:
                to_load.append((program.role, candidate))
            else:
                reasons.append(why_not)
        if not any(role == program.role for role, _ in to_load):
            raise BpfUnavailable(f"{spec.name}: nothing to attach program {program.role} to ({'; '.join(reasons)})")

    # The helper defines CME_WANT_<fn> for each variant whose kernel
    # constants it found (see the loader).
    request = {
        "name": spec.name,
        "source": spec.source,
        "cflags": list(spec.cflags),
        "constants": _constant_request(spec),
        "functions": [_function_request(c) for _, c in to_load],
        # Compiled objects are kept here and loaded from here when nothing they depend on changed.
        "cache_dir": str((state_dir or default_state_dir()) / COMPILE_CACHE_DIR),
    }
    try:
        reply, fds = run_loader(request, headers.environment(), timeout)
    except LoaderError as exc:
        raise BpfUnavailable(f"{spec.name}: {exc}") from None
    if not reply.get("ok"):
        for fd in fds:
            _close(fd)
        raise BpfUnavailable(f"{spec.name}: {reply.get('error', 'the eBPF loader failed')}")

    loaded = LoadedBpf(spec=spec, headers=headers, compile_seconds=float(reply.get("compile_seconds", 0.0)),
                       compile_cache=str(reply.get("cache", "")))
    for event in reply.get("cache_events", ()):
        log.warning("%s: eBPF compile cache: %s", spec.name, event)
    log.info("%s: %s", spec.name, "loaded from the compile cache" if loaded.compile_cache == "hit" else
             f"compiled in {loaded.compile_seconds:.2f}s (compile cache: {loaded.compile_cache or 'off'})")
    for macro, found in sorted(reply.get("constants", {}).items()):
        if "missing" in found:
            log.info("%s: %s not from BTF (%s); the C falls back to the kernel headers", spec.name, macro,
                     found["missing"])
        else:
            loaded.constants[macro] = int(found["value"])
    used: set[int] = set()
    for name, index in reply.get("maps", {}).items():
        loaded._maps[name] = BpfMap(name, fds[index])
        used.add(index)
    load_errors: dict[str, str] = {}
    for role, candidate in to_load:
        entry = reply.get("programs", {}).get(candidate.fn, {})
        if "index" not in entry:
            load_errors[f"{role}/{candidate.fn}"] = str(entry.get("error", "not loaded"))
            continue
        fd = fds[entry["index"]]
        used.add(entry["index"])
        prog_id = int(syscalls.fdinfo(fd).get("prog_id", "0") or 0)
        loaded._programs.append(_Program(role, candidate, fd, prog_id))
    for i, fd in enumerate(fds):
        if i not in used:
            _close(fd)

    if not attach:
        for key, error in load_errors.items():
            role, _, fn = key.partition("/")
            log.warning("%s: %s (%s) failed to load: %s", spec.name, role, fn, error)
        if load_errors:
            loaded.close()
            raise BpfUnavailable(f"{spec.name}: " + "; ".join(f"{k}: {v}" for k, v in load_errors.items()))
        loaded.startup_seconds = time.monotonic() - started
        return loaded

    try:
        _attach_all(loaded, tracefs, load_errors)
    except BpfUnavailable:
        loaded.close()
        raise
    loaded.startup_seconds = time.monotonic() - started
    for status in loaded.programs:
        log.info("%s: program %s attached by %s %s (id %d)", spec.name, status.role, status.method, status.target,
                 status.prog_id)
    return loaded


def _attach_all(loaded: LoadedBpf, tracefs: Path, load_errors: dict[str, str]) -> None:
    if loaded.spec.attach_together:
        _attach_together(loaded, tracefs, load_errors)
        return
    kept: list[_Program] = []
    for program in loaded.spec.programs:
        failures = [f"{fn}: {err}" for key, err in load_errors.items() for r, _, fn in [key.partition("/")]
                    if r == program.role]
        chosen: _Program | None = None
        for p in loaded._programs:
            if p.role != program.role:
                continue
            if chosen is not None:
                _close(p.prog_fd)
                p.prog_fd = -1
                continue
            try:
                p.link_fd = _attach(p.candidate, p.prog_fd, tracefs)
            except OSError as exc:
                failures.append(f"{p.candidate.method} {p.candidate.target}: {exc.strerror or exc}")
                log.info("%s: attaching %s to %s failed (%s); trying the next variant", loaded.spec.name,
                         program.role, p.candidate.target, exc.strerror or exc)
                _close(p.prog_fd)
                p.prog_fd = -1
                continue
            chosen = p
        if chosen is not None and failures:
            # A better attach kind was there but did not work: say so, since
            # the fallback may cost more or lose events (docs/ebpf.md).
            log.warning("%s: %s attached by %s %s; better variants failed: %s", loaded.spec.name, program.role,
                        chosen.candidate.method, chosen.candidate.target, "; ".join(failures))
        if chosen is None:
            # Every program still holding a descriptor (attached, or of a
            # role not reached yet) stays listed so that close() frees it.
            loaded._programs = [p for p in loaded._programs if p.prog_fd >= 0]
            raise BpfUnavailable(f"{loaded.spec.name}: cannot attach {program.role} ({'; '.join(failures)})")
        kept.append(chosen)
    loaded._programs = kept


def _attach_together(loaded: LoadedBpf, tracefs: Path, load_errors: dict[str, str]) -> None:
    """Attach every program by one method: the first (in the first program's order) that works for all."""
    roles = [program.role for program in loaded.spec.programs]
    methods = list(dict.fromkeys(c.method for c in loaded.spec.programs[0].candidates))
    failures = [f"{key}: {err}" for key, err in load_errors.items()]
    chosen: list[_Program] = []
    for method in methods:
        group = {p.role: p for p in loaded._programs if p.candidate.method == method}
        if set(group) != set(roles):
            missing = sorted(set(roles) - set(group))
            failures.append(f"{method}: {', '.join(missing)} not loaded")
            continue
        try:
            for role in roles:
                group[role].link_fd = _attach(group[role].candidate, group[role].prog_fd, tracefs)
        except OSError as exc:
            failures.append(f"{method} {group[role].candidate.target}: {exc.strerror or exc}")
            for p in group.values():
                p.detach()
            continue
        chosen = [group[role] for role in roles]
        break
    for p in loaded._programs:
        if p not in chosen:
            _close(p.prog_fd)
            p.prog_fd = -1
    loaded._programs = chosen
    if not chosen:
        raise BpfUnavailable(
            f"{loaded.spec.name}: cannot attach its programs by any one method ({'; '.join(failures)})"
        )
    if failures:
        log.warning("%s: programs attached by %s; better methods failed: %s", loaded.spec.name,
                    chosen[0].candidate.method, "; ".join(failures))
