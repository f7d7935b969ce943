"""The eBPF runtime on the real kernel: helper compile, attach, bpf(2) maps, stats, failure reasons."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.block_io import direct_writes
from helpers.exporter_scrape import ebpf_service_families

from crusoe_metrics_exporter.ebpf import (
    BpfSpec,
    BpfUnavailable,
    Kprobe,
    ProgramSpec,
    Tracepoint,
    check_environment,
    doctor_checks,
    kernel,
    load,
)
from crusoe_metrics_exporter.ebpf import headers as headers_mod
from crusoe_metrics_exporter.ebpf.service import EbpfService

COUNTER_SOURCE = r"""
BPF_HASH(counts, u32, u64, 64);
#ifdef CME_WANT_count_completions
int count_completions(void *ctx)
{
    u32 key = 1;
    u64 zero = 0, *v = counts.lookup_or_try_init(&key, &zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
#endif
"""


def _counter_spec(candidates: tuple[Tracepoint | Kprobe, ...] | None = None) -> BpfSpec:
    return BpfSpec(
        "runtime_test",
        COUNTER_SOURCE,
        programs=(
            ProgramSpec(
                "complete",
                candidates or (Tracepoint("block", "block_rq_complete", "count_completions"),),
            ),
        ),
    )


@pytest.mark.ebpf
def test_load_attach_and_map_operations(require_ebpf: None, state_dir: Path) -> None:
    with load(_counter_spec(), state_dir) as loaded:
        [status] = loaded.programs
        assert status.attached and status.method == "tracepoint" and status.prog_id > 0
        assert status.target == "block:block_rq_complete"
        counts = loaded.map("counts")
        assert (counts.key_size, counts.value_size, counts.max_entries) == (4, 8, 64)
        direct_writes(50)
        value = counts.lookup((1).to_bytes(4, "little"))
        assert value is not None and int.from_bytes(value, "little") >= 50

        counts.update((7).to_bytes(4, "little"), (123).to_bytes(8, "little"))
        items = dict(counts.items())
        assert items[(7).to_bytes(4, "little")] == (123).to_bytes(8, "little")
        assert counts.delete((7).to_bytes(4, "little")) is True
        assert counts.delete((7).to_bytes(4, "little")) is False
        assert counts.lookup((7).to_bytes(4, "little")) is None
        with pytest.raises(ValueError):
            counts.update(b"\0", b"\0")
        with pytest.raises(KeyError):
            loaded.map("nope")
    # The exporter process itself never holds bcc: it only got descriptors.
    assert "bcc" not in sys.modules


@pytest.mark.ebpf
def test_close_detaches(require_ebpf: None, state_dir: Path) -> None:
    loaded = load(_counter_spec(), state_dir)
    counts = loaded.map("counts")
    prog_id = loaded.programs[0].prog_id
    loaded.close()
    loaded.close()  # idempotent
    assert str(prog_id) not in _loaded_prog_ids()
    assert counts.fd >= 0


def _loaded_prog_ids() -> set[str]:
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(line.split()[1])
    return ids


@pytest.mark.ebpf
def test_compile_error_is_a_one_line_reason(require_ebpf: None, state_dir: Path) -> None:
    spec = BpfSpec(
        "broken",
        "int count_completions(void *ctx) { return undefined_name; }",
        programs=(ProgramSpec("complete", (Tracepoint("block", "block_rq_complete", "count_completions"),)),),
    )
    with pytest.raises(BpfUnavailable) as info:
        load(spec, state_dir)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "compiling broken failed" in message and "undefined_name" in message


@pytest.mark.ebpf
def test_verifier_rejection_names_the_program(require_ebpf: None, state_dir: Path) -> None:
    source = "int count_completions(void *ctx) { u64 *p = (u64 *)0x1234; return *p; }"
    spec = BpfSpec("rejected", source, programs=(
        ProgramSpec("complete", (Tracepoint("block", "block_rq_complete", "count_completions"),)),
    ))
    with pytest.raises(BpfUnavailable) as info:
        load(spec, state_dir)
    assert "count_completions" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.ebpf
def test_missing_tracepoint_falls_back_by_feature_detection(require_ebpf: None, state_dir: Path) -> None:
    spec = _counter_spec(
        (
            Tracepoint("block", "no_such_event_here", "count_completions"),
            Kprobe("blk_mq_end_request", "count_completions"),
        )
    )
    if kernel.kprobe_pmu_type() is None:
        # This kernel has no kprobes, so neither candidate can attach: the
        # reason must say why for each.
        with pytest.raises(BpfUnavailable) as info:
            load(spec, state_dir)
        assert "no tracepoint block:no_such_event_here" in str(info.value)
        assert "kprobe" in str(info.value)
    else:
        with load(spec, state_dir) as loaded:
            assert loaded.programs[0].method == "kprobe" and loaded.programs[0].attached


@pytest.mark.ebpf
def test_run_stats_and_service_metrics(require_ebpf: None, state_dir: Path) -> None:
    service = EbpfService(state_dir)
    before = kernel.set_bpf_stats(True)
    try:
        loaded = service.load("runtime_test", _counter_spec())
        direct_writes(20)
        stats = loaded.stats()["complete"]
        assert stats.run_cnt >= 20 and stats.run_time_ns > 0
        families = ebpf_service_families(service)
        run = families["crusoe_vm_exporter_ebpf_program_run_seconds"]
        assert run.type == "counter" and run.samples[0].value > 0
        assert run.samples[0].name.endswith("_total")
        count = families["crusoe_vm_exporter_ebpf_program_run_count"].samples[0]
        assert count.labels == {"plugin": "runtime_test", "program": "complete"} and count.value >= 20
        attached = families["crusoe_vm_exporter_ebpf_program_attached"].samples[0]
        assert attached.labels["method"] == "tracepoint" and attached.value == 1.0
        assert families["crusoe_vm_exporter_ebpf_stats_enabled"].samples[0].value == 1.0
        service.release("runtime_test", loaded)
        assert [s.metric for s in service.collect()] == ["exporter_ebpf_stats_enabled"]
    finally:
        kernel.set_bpf_stats(before)
        service.stop()


def _as_nobody(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a forked child that dropped root for uid/gid 65534; return its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = fn()
            os.write(write_end, json.dumps(result).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"child_error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.ebpf
def test_non_root_is_unsupported_with_a_reason(require_ebpf: None, state_dir: Path) -> None:
    def check() -> object:
        support = check_environment(mount_tracefs=False, state_dir=state_dir)
        return {"supported": support.supported, "reason": support.reason}

    result = _as_nobody(check)
    assert result == {
        "supported": False,
        "reason": "eBPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); running as uid 65534 without them",
    }


@pytest.mark.ebpf
def test_exporter_as_non_root_serves_without_disk_latency(require_ebpf: None) -> None:
    def run() -> object:
        from crusoe_metrics_exporter.app import Exporter
        from crusoe_metrics_exporter.exposition import render

        ex = Exporter.from_environment(environ={})
        ex.start()
        try:
            states = {r.name: [r.state, r.reason] for r in ex.records}
            text = render(ex.collect()).decode()
        finally:
            ex.stop()
        return {"states": states, "has_meta": "crusoe_vm_exporter_" in text}

    # Everything a start and a scrape import is imported here first: this
    # machine's Python lives under /root, which uid 65534 cannot read.
    from crusoe_metrics_exporter.app import Exporter
    from crusoe_metrics_exporter.exposition import render

    warm = Exporter.from_environment(environ={})
    warm.start()
    render(warm.collect())
    warm.stop()

    result = _as_nobody(run)
    assert isinstance(result, dict) and "child_error" not in result, result
    state, reason = result["states"]["disk_latency"]
    assert state == "unsupported" and "CAP_BPF" in reason
    assert result["has_meta"]


def _fake_tree(root: Path, name: str, *, arch: str, common: Path | None) -> Path:
    tree = root / name
    (tree / "include" / "generated").mkdir(parents=True)
    (tree / "arch" / arch / "include" / "generated").mkdir(parents=True)
    (tree / "include" / "generated" / "autoconf.h").write_text("/* arch */\n")
    if common is not None:
        (tree / "Makefile").write_text(f"include {common}/Makefile\n")
    return tree


def test_nearest_distribution_headers_are_merged_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "usr-src"
    for version in ("5.10.0-30", "6.1.0-56", "6.12.0-2"):
        common = src / f"linux-headers-{version}-common"
        (common / "include" / "linux").mkdir(parents=True)
        (common / "include" / "linux" / "kconfig.h").write_text(f"/* {version} */\n")
        (common / "include" / "generated").mkdir(parents=True)
        (common / "include" / "generated" / "common-only.h").write_text("")
        (common / "Makefile").write_text("")
        _fake_tree(src, f"linux-headers-{version}-cloud-amd64", arch="x86", common=common)
    monkeypatch.setattr(headers_mod, "DISTRO_HEADERS_ROOT", src)
    monkeypatch.setattr(headers_mod, "MODULES_ROOT", tmp_path / "no-modules")
    monkeypatch.setattr(headers_mod, "KHEADERS_ARCHIVE", tmp_path / "no-kheaders")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    state = tmp_path / "state"

    choice = headers_mod.resolve_headers(state, release="6.10.3-1-cloud-amd64")
    assert choice.source == state / "kernel-headers" / "linux-headers-6.12.0-2-cloud-amd64"
    assert not choice.exact and "6.12.0-2-common + linux-headers-6.12.0-2-cloud-amd64" in choice.description
    merged = choice.source
    assert (merged / "include" / "linux" / "kconfig.h").read_text() == "/* 6.12.0-2 */\n"
    # Both halves of include/generated are visible: the directories merge.
    assert (merged / "include" / "generated" / "autoconf.h").exists()
    assert (merged / "include" / "generated" / "common-only.h").exists()
    assert (merged / "include" / "generated").is_dir() and not (merged / "include" / "generated").is_symlink()
    # Nothing was written outside the state dir.
    assert not any(p.is_symlink() for p in src.rglob("*"))
    # A second resolution reuses the tree.
    stamp = (merged / ".crusoe-sources").stat().st_mtime_ns
    assert headers_mod.resolve_headers(state, release="6.10.3-1-cloud-amd64") == choice
    assert (merged / ".crusoe-sources").stat().st_mtime_ns == stamp

    assert headers_mod.resolve_headers(state, release="5.10.0-31-amd64").source == (
        state / "kernel-headers" / "linux-headers-5.10.0-30-cloud-amd64"
    )


def test_concurrent_header_builds_share_one_tree_and_leave_no_scratch(tmp_path: Path) -> None:
    """Builders that do not share a lock (other processes on one state dir) each use a scratch dir of their own."""
    common = tmp_path / "linux-headers-6.1.0-9-common"
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("/* common */\n")
    tree = _fake_tree(tmp_path, "linux-headers-6.1.0-9-cloud-amd64", arch="x86", common=common)
    state = tmp_path / "state"
    barrier = threading.Barrier(6)
    results: list[Path | BaseException] = []

    def build() -> None:
        barrier.wait()
        try:
            results.append(headers_mod._build_merged_tree(state, tree, [common, tree]))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    out = state / "kernel-headers" / tree.name
    assert results == [out] * 6
    assert (out / "include" / "linux" / "kconfig.h").read_text() == "/* common */\n"
    assert sorted(p.name for p in out.parent.iterdir()) == [tree.name]


def test_running_kernel_headers_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = tmp_path / "modules" / "6.1.0-9" / "build"
    (build / "include" / "linux").mkdir(parents=True)
    (build / "include" / "linux" / "kconfig.h").write_text("")
    monkeypatch.setattr(headers_mod, "MODULES_ROOT", tmp_path / "modules")
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    choice = headers_mod.resolve_headers(tmp_path / "state", release="6.1.0-9")
    assert choice.exact and choice.source is None and str(build) in choice.description
    assert not (tmp_path / "state").exists()


def test_no_headers_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headers_mod, "DISTRO_HEADERS_ROOT", tmp_path / "empty")
    monkeypatch.setattr(headers_mod, "MODULES_ROOT", tmp_path / "no-modules")
    monkeypatch.setattr(headers_mod, "KHEADERS_ARCHIVE", tmp_path / "no-kheaders")
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    with pytest.raises(headers_mod.HeadersUnavailable, match=r"install linux-headers-9\.9\.9"):
        headers_mod.resolve_headers(tmp_path / "state", release="9.9.9")


@pytest.mark.ebpf
def test_doctor_checks_cover_every_prerequisite(require_ebpf: None) -> None:
    checks = {c.name: c for c in doctor_checks()}
    assert set(checks) == {
        "ebpf privileges", "syscall filter", "bcc", "tracefs", "kernel headers", "kernel BTF", "kprobes",
        "bpf run-time stats",
    }
    assert checks["bcc"].ok and checks["ebpf privileges"].ok and checks["kernel headers"].ok
    assert checks["syscall filter"].ok, checks["syscall filter"]
    for name, ok, detail, fix in checks.values():
        assert detail, name
        assert ok or fix, f"{name} failed without a fix"


@pytest.mark.ebpf
def test_tracefs_is_mounted_when_absent(require_ebpf: None) -> None:
    """In a private mount namespace (the host's mounts are untouched) tracefs is unmounted, then mounted back."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is required for this test")
    script = (
        "import json\n"
        "from crusoe_metrics_exporter.ebpf import kernel\n"
        "print(json.dumps([str(kernel.tracefs_root()), *map(str, kernel.ensure_tracefs(False)),"
        " *map(str, kernel.ensure_tracefs(True)), str(kernel.tracepoint_id('block', 'block_rq_issue'))]))\n"
    )
    shell = (
        "for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do "
        "while mountpoint -q $m; do umount $m || exit 3; done; done; "
        f"exec {sys.executable} -c \"$0\""
    )
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    before, absent, why, mounted, how, tp_id = json.loads(out.stdout)
    assert before == "None" and absent == "None"
    assert "mounting it is disabled" in why
    assert mounted == "/sys/kernel/tracing" and "mounted by the exporter" in how
    assert int(tp_id) > 0
    assert kernel.tracefs_root() is not None  # our own namespace still has it


THREE_PROGRAMS_SOURCE = r"""
#ifdef CME_WANT_first
int first(void *ctx) { return 0; }
#endif
#ifdef CME_WANT_second
int second(void *ctx) { return 0; }
#endif
#ifdef CME_WANT_third
int third(void *ctx) { return 0; }
#endif
"""


@pytest.mark.ebpf
def test_failed_attach_closes_every_program(
    require_ebpf: None, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that cannot attach fails the load; no program stays loaded, attached or not."""
    from crusoe_metrics_exporter.ebpf import runtime

    spec = BpfSpec(
        "three",
        THREE_PROGRAMS_SOURCE,
        programs=(
            ProgramSpec("a", (Tracepoint("block", "block_rq_issue", "first"),)),
            ProgramSpec("b", (Tracepoint("block", "block_rq_complete", "second"),)),
            ProgramSpec("c", (Tracepoint("block", "block_rq_insert", "third"),)),
        ),
    )
    real_attach = runtime._attach

    def attach(candidate: Tracepoint | Kprobe, prog_fd: int, tracefs: Path) -> int:
        if candidate.fn == "second":
            raise OSError(28, "No space left on device")
        return real_attach(candidate, prog_fd, tracefs)

    monkeypatch.setattr(runtime, "_attach", attach)
    before = _loaded_prog_ids()
    with pytest.raises(BpfUnavailable) as info:
        load(spec, state_dir)
    assert "cannot attach b" in str(info.value)
    assert _loaded_prog_ids() == before
