"""The guest runner's own guarantees, checked on the host without booting a guest.

No QEMU is left behind (timeouts kill the whole process group), concurrent
image builds from several clones build once, a failed build leaves nothing
half-made in the cache, and with CI=true a guest suite that cannot run fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.vm import image, qemu
from tests.vm.__main__ import guest_test_files

REPO = image.REPO_ROOT


def _alive(pid: int) -> bool:
    """Running (a killed child waiting to be reaped by init, a zombie, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and _alive(int(entry.name)):
                    members.append(int(entry.name))
            except ProcessLookupError:
                continue
    return members


def test_timeout_kills_the_whole_process_group() -> None:
    started: list[int] = []
    argv = ["sh", "-c", "sleep 300 & echo $!; sleep 300"]
    with qemu.process_group(argv, stdout=subprocess.PIPE) as proc:
        started.append(proc.pid)
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _alive(child)
    assert not _group_members(started[0]), "a process of the group survived"
    assert not _alive(child)


def test_a_real_qemu_is_killed_at_its_timeout() -> None:
    if shutil.which(qemu.QEMU) is None:
        pytest.fail(f"{qemu.QEMU} is not installed (make setup-test installs it)")
    # No machine, no kernel: QEMU just sits there until killed.
    argv = [qemu.QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "none"]
    started = time.monotonic()
    status, _, timed_out = qemu.run_with_timeout(argv, timeout=2.0, echo=None)
    assert timed_out and status is None
    assert time.monotonic() - started < 20
    leftovers = subprocess.run(["pgrep", "-f", "-x", " ".join(argv)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", f"QEMU still running: {leftovers.stdout}"


def test_recipe_hash_follows_the_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    before = image.recipe_hash()
    assert image.recipe_hash() == before
    monkeypatch.setattr(image, "GUEST_TEST_REQUIREMENTS", ("pytest>=8", "hypothesis"))
    assert image.recipe_hash() != before


def test_concurrent_builds_build_once_and_publish_atomically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(image.CACHE_ENV, str(tmp_path))
    builds: list[Path] = []
    seen_partial: list[bool] = []

    def fake_build(scratch: Path, log: Path | None) -> None:
        builds.append(scratch)
        (scratch / "kernel_release").write_text("6.1.0-test\n")
        time.sleep(0.5)
        # While building, no complete image is visible under the final name.
        seen_partial.append(image.cached_image() is not None)

    monkeypatch.setattr(image, "_build", fake_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(image.ensure_image().root)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(builds) == 1
    assert seen_partial == [False]
    assert len(set(results)) == 1 and results[0] == tmp_path / image.recipe_hash()
    assert image.cached_image() is not None
    assert [p.name for p in tmp_path.iterdir() if ".building-" in p.name] == []


def test_a_failed_build_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(image.CACHE_ENV, str(tmp_path))

    def broken_build(scratch: Path, log: Path | None) -> None:
        (scratch / "rootfs.img").write_text("half")
        raise image.ImageError("mmdebstrap failed")

    monkeypatch.setattr(image, "_build", broken_build)
    with pytest.raises(image.ImageError):
        image.ensure_image()
    assert image.cached_image() is None
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


@pytest.mark.parametrize(("ci", "expected"), [("true", 1), ("", 0)])
def test_guest_suite_that_cannot_run_fails_only_in_ci(ci: str, expected: int, tmp_path: Path) -> None:
    env = {**os.environ, "CI": ci, "PATH": str(tmp_path), image.CACHE_ENV: str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "tests.vm", "test"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == expected, proc.stderr
    assert "!!! GUEST TESTS SKIPPED" in proc.stderr and "qemu-system-x86_64 is not installed" in proc.stderr


def test_every_guest_test_is_marked_kernel_vm_and_deselected_on_the_host() -> None:
    files = guest_test_files()
    assert files, "no test_*_guest.py files"
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *files]
    everything = subprocess.run([*base, "-m", ""], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    marked = subprocess.run([*base, "-m", "kernel_vm"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    default = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    def ids(out: str) -> set[str]:
        return {line for line in out.splitlines() if "::" in line}

    assert ids(everything.stdout), everything.stdout + everything.stderr
    assert ids(marked.stdout) == ids(everything.stdout), "a test in a *_guest.py file lacks the kernel_vm mark"
    assert ids(default.stdout) == set(), "the host run would collect guest tests"


def test_a_guest_test_selected_on_the_host_skips_and_fails_in_ci() -> None:
    """Outside the guest a kernel_vm test skips saying how to run it; CI=true makes that a failure."""
    target = "plugins/disk_latency/tests/test_disk_latency_guest.py"
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "kernel_vm", "-k", "plan", target]
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CME_TEST_GUEST")}
    local = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert "make test-vm" in local.stdout
    ci = subprocess.run(base, cwd=REPO, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=120,
                        check=False)
    assert ci.returncode == 1 and "must run in CI" in ci.stdout, ci.stdout
