"""Load a plugin's eBPF object: choose variants, compile in the helper, attach here, read maps.

The exporter process only ever holds file descriptors: programs and maps
come from the loader helper (see :mod:`.loader`), attaching is a
``perf_event_open`` plus two ioctls, and map access is plain ``bpf(2)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from crusoe_metrics_exporter.ebpf import kernel, syscalls
from crusoe_metrics_exporter.ebpf.headers import HeaderChoice, HeadersUnavailable, resolve_headers
from crusoe_metrics_exporter.ebpf.loader import DEFAULT_TIMEOUT, LoaderError, run_loader
from crusoe_metrics_exporter.ebpf.spec import (
    AttachCandidate,
    BpfSpec,
    BpfUnavailable,
    Kprobe,
    ProgramStats,
    ProgramStatus,
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
    perf_fd: int = -1
    error: str = ""

    def status(self) -> ProgramStatus:
        c = self.candidate
        return ProgramStatus(self.role, c.fn, c.method, c.target, self.perf_fd >= 0, self.prog_id, self.error)


@dataclass
class LoadedBpf:
    """A loaded (and usually attached) eBPF object owned by the exporter process."""

    spec: BpfSpec
    headers: HeaderChoice
    compile_seconds: float = 0.0
    startup_seconds: float = 0.0
    _programs: list[_Program] = field(default_factory=list)
    _maps: dict[str, BpfMap] = field(default_factory=dict)
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

    def stats(self) -> dict[str, ProgramStats]:
        """Per role, the kernel's run time and run count; empty unless bpf_stats_enabled is on."""
        if not kernel.bpf_stats_enabled():
            return {}
        out: dict[str, ProgramStats] = {}
        with self._lock:
            for p in self._programs:
                if self._closed or p.perf_fd < 0:
                    continue
                info = syscalls.fdinfo(p.prog_fd)
                try:
                    out[p.role] = ProgramStats(
                        p.role, p.candidate.fn, int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))
                    )
                except ValueError:
                    continue
        return out

    def details(self) -> dict[str, str]:
        """Facts for ``plugins``/``/``: attach method per program and headers in use."""
        out = {f"attach.{p.role}": f"{p.candidate.method} {p.candidate.target}" for p in self._programs}
        methods = sorted({p.candidate.method for p in self._programs if p.perf_fd >= 0})
        if methods:
            out["attach_method"] = "+".join(methods)
        out["kernel_headers"] = self.headers.description
        out["startup_seconds"] = f"{self.startup_seconds:.2f}"
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for p in self._programs:
                if p.perf_fd >= 0:
                    syscalls.perf_event_disable(p.perf_fd)
                    _close(p.perf_fd)
                    p.perf_fd = -1
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


def _viable(candidate: AttachCandidate, tracefs: Path, kprobe_functions: set[str]) -> str | None:
    """None when this kernel offers the candidate's attach point, else why not."""
    if isinstance(candidate, Tracepoint):
        if kernel.tracepoint_id(candidate.category, candidate.event, tracefs) is None:
            return f"no tracepoint {candidate.target}"
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
    kprobe_names = {c.function for p in spec.programs for c in p.candidates if isinstance(c, Kprobe)}
    probeable = kernel.traceable_functions(kprobe_names, tracefs) if kprobe_names else set()
    plan: dict[str, AttachCandidate | str] = {}
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


def _prog_type(candidate: AttachCandidate) -> int:
    return syscalls.BPF_PROG_TYPE_TRACEPOINT if isinstance(candidate, Tracepoint) else syscalls.BPF_PROG_TYPE_KPROBE


def _attach(candidate: AttachCandidate, prog_fd: int, tracefs: Path) -> int:
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

    kprobe_names = {c.function for p in spec.programs for c in p.candidates if isinstance(c, Kprobe)}
    probeable = kernel.traceable_functions(kprobe_names, tracefs) if kprobe_names else set()
    to_load: list[tuple[str, AttachCandidate]] = []
    for program in spec.programs:
        reasons = []
        for candidate in program.candidates:
            why_not = _viable(candidate, tracefs, probeable)
            # Without attaching, kprobe variants only need the verifier, not
            # the function; tracepoint variants still need the tracepoint's
            # format to compile.
            if why_not is None or (not attach and isinstance(candidate, Kprobe)):
                to_load.append((program.role, candidate))
            else:
                reasons.append(why_not)
        if not any(role == program.role for role, _ in to_load):
            raise BpfUnavailable(f"{spec.name}: nothing to attach program {program.role} to ({'; '.join(reasons)})")

    cflags = list(spec.cflags) + [f"-D{want_macro(c.fn)}=1" for _, c in to_load]
    request = {
        "name": spec.name,
        "source": spec.source,
        "cflags": cflags,
        "functions": [{"fn": c.fn, "prog_type": _prog_type(c)} for _, c in to_load],
    }
    try:
        reply, fds = run_loader(request, headers.environment(), timeout)
    except LoaderError as exc:
        raise BpfUnavailable(f"{spec.name}: {exc}") from None
    if not reply.get("ok"):
        for fd in fds:
            _close(fd)
        raise BpfUnavailable(f"{spec.name}: {reply.get('error', 'the eBPF loader failed')}")

    loaded = LoadedBpf(spec=spec, headers=headers, compile_seconds=float(reply.get("compile_seconds", 0.0)))
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
                p.perf_fd = _attach(p.candidate, p.prog_fd, tracefs)
            except OSError as exc:
                failures.append(f"{p.candidate.method} {p.candidate.target}: {exc.strerror or exc}")
                log.info("%s: attaching %s to %s failed (%s); trying the next variant", loaded.spec.name,
                         program.role, p.candidate.target, exc.strerror or exc)
                _close(p.prog_fd)
                p.prog_fd = -1
                continue
            chosen = p
        if chosen is None:
            # Every program still holding a descriptor (attached, or of a
            # role not reached yet) stays listed so that close() frees it.
            loaded._programs = [p for p in loaded._programs if p.prog_fd >= 0]
            raise BpfUnavailable(f"{loaded.spec.name}: cannot attach {program.role} ({'; '.join(failures)})")
        kept.append(chosen)
    loaded._programs = kept
