"""The state directory is private to the exporter; one another user could write into is refused, never used.

The trial: with the state dir writable by another user, the root exporter
compiled against kernel headers that user planted ("error: PLANTED BY UID
1001"). Here the other user is real (nobody, uid 65534, through setpriv),
and plants a header tree exactly where the exporter would reuse one.
"""

from __future__ import annotations

import os
import platform
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.server import CLI

from crusoe_metrics_exporter.ebpf import headers
from crusoe_metrics_exporter.ebpf.headers import HeadersUnavailable, resolve_headers
from crusoe_metrics_exporter.statedir import UntrustedPath, private_dir

NOBODY = 65534
RELEASE = "6.1.0-99-cloud-amd64"
TREE = f"linux-headers-{RELEASE}"


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv], check=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp: sticky and world-writable, so another user can create things in it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    path = Path(tempfile.mkdtemp(prefix="cme-state-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


@pytest.fixture
def distro_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No headers for the running kernel; a Debian-style split tree under a /usr/src of the test's own."""
    src = tmp_path / "usr-src"
    common = src / "linux-headers-6.1.0-99-common"
    arch = src / TREE
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("/* the real one */\n")
    (arch / "include" / "generated").mkdir(parents=True)
    (arch / "arch" / "x86").mkdir(parents=True)
    (arch / "Makefile").write_text(f"include {common}/Makefile\n")
    monkeypatch.setattr(headers, "MODULES_ROOT", tmp_path / "no-modules")
    monkeypatch.setattr(headers, "KHEADERS_ARCHIVE", tmp_path / "no-kheaders")
    monkeypatch.setattr(headers, "DISTRO_HEADERS_ROOT", src)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    return src


def test_a_new_state_dir_is_created_0700_and_owned_by_the_exporter(tmp_path: Path, distro_headers: Path) -> None:
    state = tmp_path / "var" / "lib" / "cme"
    choice = resolve_headers(state, RELEASE)
    st = os.stat(state)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert choice.source == state / "kernel-headers" / TREE
    assert (choice.source / "include" / "linux" / "kconfig.h").read_text() == "/* the real one */\n"
    # Reused as it is on the next start.
    assert resolve_headers(state, RELEASE) == choice


def test_a_state_dir_planted_by_another_user_is_refused_and_never_read(shared_tmp: Path,
                                                                       distro_headers: Path) -> None:
    state = shared_tmp / "state"
    planted = state / "kernel-headers" / TREE
    # Everything the exporter would reuse: the marker naming the right parts and a kconfig.h.
    as_nobody("mkdir", "-p", str(planted / "include" / "linux"))
    as_nobody("sh", "-c", f"echo '#error PLANTED BY UID {NOBODY}' > {planted}/include/linux/kconfig.h")
    parts = "\n".join(str(p) for p in headers._tree_parts(distro_headers / TREE))
    as_nobody("sh", "-c", f"printf '%s' '{parts}' > {planted}/.crusoe-sources")
    with pytest.raises(HeadersUnavailable) as err:
        resolve_headers(state, RELEASE)
    message = str(err.value)
    assert message == (f"state dir {state} is owned by uid {NOBODY}, not by the exporter's uid 0; the exporter will "
                       f"not use it; remove {state} (the exporter creates it again, mode 0700), or if its content is "
                       f"yours: chown -R 0 {state} && chmod -R go-w {state}")
    assert "\n" not in message
    # Never repaired either: still nobody's, still planted.
    assert os.stat(state).st_uid == NOBODY
    assert "PLANTED" in (planted / "include" / "linux" / "kconfig.h").read_text()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_state_dir_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "kernel-headers").mkdir()  # content: anyone could have put it there
    state.chmod(mode)
    with pytest.raises(UntrustedPath, match=rf"^state dir {state} is writable by .*\(mode {mode:04o}\); the exporter"):
        private_dir(state)
    assert stat.S_IMODE(os.stat(state).st_mode) == mode


def test_an_empty_volume_is_made_private_a_sticky_one_gets_a_private_subdirectory(tmp_path: Path) -> None:
    """Fresh volumes: a Kubernetes emptyDir (0777, the exporter's) and a /tmp-like one (1777, root's)."""
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    empty_dir.chmod(0o777)
    assert private_dir(empty_dir) == empty_dir
    assert stat.S_IMODE(os.stat(empty_dir).st_mode) == 0o700
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    private = private_dir(sticky)
    assert private == sticky / f"uid-{os.geteuid()}"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sticky).st_mode) == 0o1777  # the volume itself is left as it is


def test_a_header_tree_inside_the_state_dir_that_another_user_owns_is_refused(tmp_path: Path,
                                                                              distro_headers: Path) -> None:
    state = tmp_path / "state"
    choice = resolve_headers(state, RELEASE)
    assert choice.source is not None
    victim = choice.source / "include"
    os.chown(victim, NOBODY, NOBODY, follow_symlinks=False)
    expected = (rf"^kernel header tree {choice.source}: {victim} is owned by uid {NOBODY}.*; "
                rf"remove {choice.source} \(the exporter builds it again\)$")
    with pytest.raises(HeadersUnavailable, match=expected):
        resolve_headers(state, RELEASE)


def test_a_parent_others_can_write_is_refused_a_sticky_one_is_not(tmp_path: Path, shared_tmp: Path) -> None:
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    with pytest.raises(UntrustedPath, match=rf"its parent {open_parent} is writable by its group and everyone"):
        private_dir(open_parent / "state")
    assert not (open_parent / "state").exists()
    assert private_dir(shared_tmp / "state") == shared_tmp / "state"  # /tmp-like: sticky


def test_distribution_headers_someone_else_can_write_are_refused(tmp_path: Path, distro_headers: Path) -> None:
    common = distro_headers / "linux-headers-6.1.0-99-common"
    common.chmod(0o777)
    with pytest.raises(HeadersUnavailable, match=rf"^kernel headers {common} is writable by"):
        resolve_headers(tmp_path / "state", RELEASE)


def test_doctor_names_the_planted_state_dir_and_the_fix(shared_tmp: Path) -> None:
    """The real exporter (doctor) on this host, whose kernel needs a merged header tree in the state dir."""
    if headers.resolve_headers(shared_tmp / "probe").source is None:
        pytest.skip("this host has its running kernel's own headers: the state dir is not used for them")
    state = shared_tmp / "state"
    as_nobody("mkdir", "-p", str(state / "kernel-headers"))
    env = {**os.environ, "CRUSOE_EXPORTER_STATE_DIR": str(state), "HOST_PROC_PATH": "/proc"}
    out = subprocess.run([CLI, "doctor"], env=env, capture_output=True, text=True, timeout=120)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("[FAIL] kernel headers:"))
    assert f"state dir {state} is owned by uid {NOBODY}" in line and f"remove {state}" in line
    assert os.stat(state).st_uid == NOBODY
