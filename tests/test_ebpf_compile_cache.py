"""The eBPF compile cache on the real kernel: hit, miss, corruption, refusal, key change, warm restart.

Every load runs the real loader helper process; the cached program must do
exactly what the compiled one does (count this process's getppid() calls).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.server import running_exporter

from crusoe_metrics_exporter.ebpf import BpfSpec, LoadedBpf, ProgramSpec, Tracepoint, load

pytestmark = pytest.mark.ebpf

SOURCE = r"""
BPF_ARRAY(calls, u64, 1);
#ifdef CME_WANT_count_getppid
int count_getppid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != WATCHED_TGID)
        return 0;
    u32 zero = 0;
    u64 *n = calls.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
#endif
"""


def _spec(source: str = SOURCE) -> BpfSpec:
    return BpfSpec("cache_test", source, cflags=(f"-DWATCHED_TGID={os.getpid()}",),
                   programs=(ProgramSpec("getppid", (Tracepoint("syscalls", "sys_enter_getppid", "count_getppid"),)),))


def _counts_calls(loaded: LoadedBpf, n: int = 25) -> int:
    calls = loaded.map("calls")
    before = int.from_bytes(calls.lookup(bytes(4)) or bytes(8), "little")
    for _ in range(n):
        os.getppid()
    return int.from_bytes(calls.lookup(bytes(4)) or bytes(8), "little") - before


def _entries(state: Path) -> list[Path]:
    return sorted((state / "ebpf-cache").glob("cache_test-*.json"))


def _rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit an entry and give it a valid checksum again: only the deeper checks can catch it."""
    document = json.loads(path.read_bytes())
    change(document)
    canonical = json.dumps(document["payload"], sort_keys=True, separators=(",", ":")).encode()
    document["checksum"] = hashlib.sha256(canonical).hexdigest()
    path.write_text(json.dumps(document))


@pytest.fixture
def state(require_ebpf: None, tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_miss_stores_and_hit_loads_without_compiling(state: Path) -> None:
    with load(_spec(), state) as cold:
        assert cold.compile_cache == "stored" and cold.compile_seconds > 0
        assert _counts_calls(cold) == 25
    assert len(_entries(state)) == 1
    with load(_spec(), state) as warm:
        assert warm.compile_cache == "hit" and warm.compile_seconds == 0
        assert warm.details()["compile_cache"] == "hit"
        assert all(p.attached and p.prog_id > 0 for p in warm.programs)
        assert _counts_calls(warm) == 25


def test_corrupted_entry_is_discarded_and_rebuilt(state: Path, caplog: pytest.LogCaptureFixture) -> None:
    with load(_spec(), state):
        pass
    [entry] = _entries(state)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x55
    entry.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="crusoe_metrics_exporter.ebpf.runtime")
    with load(_spec(), state) as rebuilt:
        assert rebuilt.compile_cache == "stored"
        assert _counts_calls(rebuilt) == 25
    assert "discarded" in caplog.text
    with load(_spec(), state) as warm:
        assert warm.compile_cache == "hit"


def _break_program(document: dict[str, Any]) -> None:
    # A well-formed file whose program no verifier accepts: it ends without an exit.
    program = document["payload"]["programs"][0]
    insns = bytearray(base64.b64decode(program["insns"]))
    insns[-8:] = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0])  # r0 = 0 in place of exit
    program["insns"] = base64.b64encode(bytes(insns)).decode()


@pytest.mark.parametrize(("change", "warning"), [
    # The kernel refuses the stored program now.
    (_break_program, "the kernel refused it now"),
    # A consistent entry whose program claims to be a socket filter, not the tracepoint program asked for.
    (lambda d: d["payload"]["programs"][0].update(prog_type=1), "not 5 as asked for"),
    # An entry made for another kernel, renamed to this start's key.
    (lambda d: d["material"]["kernel"].update(release="5.4.0-foreign"), "compiled for other inputs"),
], ids=["refused-by-the-kernel", "other-program-type", "other-kernel"])
def test_entry_with_a_valid_checksum_but_wrong_content_is_rebuilt(
    state: Path, caplog: pytest.LogCaptureFixture, change: Callable[[dict[str, Any]], None], warning: str
) -> None:
    with load(_spec(), state):
        pass
    [entry] = _entries(state)
    _rewrite(entry, change)
    caplog.set_level(logging.WARNING, logger="crusoe_metrics_exporter.ebpf.runtime")
    with load(_spec(), state) as rebuilt:
        assert rebuilt.compile_cache == "stored"
        assert _counts_calls(rebuilt) == 25
    assert warning in caplog.text
    with load(_spec(), state) as warm:
        assert warm.compile_cache == "hit"


def test_edited_source_is_a_miss(state: Path) -> None:
    with load(_spec(), state):
        pass
    edited = SOURCE.replace("return 0;\n}", "return 0; /* edited */\n}")
    with load(_spec(edited), state) as other:
        assert other.compile_cache == "stored"
        assert _counts_calls(other) == 25
    assert len(_entries(state)) == 2
    with load(_spec(), state) as first:
        assert first.compile_cache == "hit"


def test_entry_of_another_user_is_not_used(state: Path) -> None:
    with load(_spec(), state):
        pass
    [entry] = _entries(state)
    os.chown(entry, 65534, 65534)
    with load(_spec(), state) as rebuilt:
        assert rebuilt.compile_cache == "stored"
        assert _counts_calls(rebuilt) == 25


def test_warm_restart_has_every_plugin_active_from_the_cache(require_ebpf: None, tmp_path: Path) -> None:
    env = {"CRUSOE_EXPORTER_STATE_DIR": str(tmp_path / "state"), "OBJSTORE_ENDPOINT_IPS": "127.0.0.1",
           "NFS_SERVER_IPS": "127.0.0.1"}
    states: dict[str, dict[str, str]] = {}
    for start in ("cold", "warm"):
        with running_exporter(env) as exporter:
            status, _, body = exporter.get("/plugins.json")
            assert status == 200
            records = {r["name"]: r for r in json.loads(body)}
            ebpf = {name: r for name, r in records.items() if "compile_cache" in r["details"]}
            assert set(ebpf) == {"disk_latency", "nfs_latency", "objstore"}, records
            expected = "stored" if start == "cold" else "hit"
            assert {r["details"]["compile_cache"] for r in ebpf.values()} == {expected}, start
            assert all(r["state"] == "active" for r in ebpf.values()), ebpf
            # Only what this host lacks (nvme without controllers) may settle otherwise, never as failed.
            states[start] = {name: r["state"] for name, r in records.items()}
            assert set(states[start].values()) <= {"active", "unsupported"}, records
            # /metrics is complete: every plugin reports its settled state in it.
            metrics = exporter.get("/metrics")[2]
            for name, state in states[start].items():
                assert f'crusoe_vm_exporter_plugin_state{{plugin="{name}",state="{state}"}} 1.0' in metrics
    assert states["warm"] == states["cold"]
