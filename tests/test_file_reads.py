"""Every read of a kernel or user file goes through the one bounded, non-blocking reader (core/files.py).

The reader is tested against what can be put where a file belongs (a FIFO
with no writer, /dev/zero, a directory, a symlink loop, a 100 MB file), and a
walk over the package's source refuses any other way of opening a file.
"""

from __future__ import annotations

import ast
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.procfs_tree import HOSTILE_KINDS, make_hostile

from crusoe_metrics_exporter.files import iter_lines, open_char_device, read_file, read_limited, read_text

REPO = Path(__file__).resolve().parent.parent


def _within(seconds: float, func: Callable[[], object]) -> object:
    """``func()``'s result or exception; fails the test if it has not returned in time (it would hang)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds}s"
    return box.get("error", box.get("value"))


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
@pytest.mark.parametrize("reader", ["read_limited", "read_file", "read_text", "iter_lines"])
def test_a_hostile_file_is_an_error_naming_it_never_a_hang_or_a_huge_read(tmp_path: Path, kind: str,
                                                                          reader: str) -> None:
    path = tmp_path / "diskstats"
    make_hostile(path, kind)
    limit = 1024 * 1024
    calls: dict[str, Callable[[], object]] = {
        "read_limited": lambda: read_limited(path, limit),
        "read_file": lambda: read_file(path, limit),
        "read_text": lambda: read_text(path, limit),
        "iter_lines": lambda: sum(len(line) for line in iter_lines(path, limit)),
    }
    started = time.monotonic()
    outcome = _within(5.0, calls[reader])
    assert time.monotonic() - started < 2.0
    if kind == "huge" and reader == "read_limited":
        # A regular file longer than the limit is cut, not refused; no newline to cut at, so nothing is kept.
        assert outcome == (b"", True)
        return
    if kind == "huge" and reader == "iter_lines":
        assert outcome == 0  # NULs and no newline: one "line" cut by the limit, so not yielded
        return
    assert isinstance(outcome, OSError), outcome
    assert outcome.filename == str(path)
    expected = {
        "fifo": "a FIFO, not a regular file",
        "dev_zero": "a character device, not a regular file",
        "directory": "a directory, not a regular file",
        "symlink_loop": os.strerror(errno.ELOOP),
        "huge": f"larger than {limit} bytes",
    }[kind]
    assert outcome.strerror == expected
    assert str(path) in str(outcome)


def test_a_fifo_with_a_writer_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "mounts"
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer that never closes
    try:
        os.write(writer, b"x" * 100)
        outcome = _within(5.0, lambda: read_limited(path))
        assert isinstance(outcome, OSError) and outcome.strerror == "a FIFO, not a regular file"
    finally:
        os.close(writer)


def test_regular_files_and_procfs_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"one\ntwo\nthree\n")
    assert read_limited(path) == (b"one\ntwo\nthree\n", False)
    assert read_limited(path, 9) == (b"one\ntwo\n", True)
    assert read_file(path) == b"one\ntwo\nthree\n"
    assert list(iter_lines(path, 8)) == [b"one\n", b"two\n"]
    # procfs: size 0, read to EOF; /proc/self is a symlink and is followed.
    assert read_text("/proc/self/status").startswith("Name:")
    assert read_limited(Path("/proc/self/mounts")).data


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink_loop", "huge"])
def test_a_device_read_by_design_refuses_anything_else_in_its_place(tmp_path: Path, kind: str) -> None:
    """/dev/kmsg and NVMe admin nodes: a FIFO there must not block the open, a file must not be read as one."""
    path = tmp_path / "kmsg"
    make_hostile(path, kind)
    outcome = _within(5.0, lambda: open_char_device(path))
    assert isinstance(outcome, OSError), outcome
    assert outcome.filename == str(path)
    assert outcome.strerror == {
        "fifo": "a FIFO, not a character device",
        "directory": "a directory, not a character device",
        "symlink_loop": os.strerror(errno.ELOOP),
        "huge": "a regular file, not a character device",
    }[kind]
    fd = open_char_device(Path("/dev/zero"))
    try:
        assert os.read(fd, 4) == b"\0\0\0\0"
    finally:
        os.close(fd)


# -- no other way to open a file --------------------------------------------------

#: Calls that read a file without the reader, each with why it is allowed.
ALLOWED: dict[tuple[str, str], str] = {
    ("core/ebpf/cache.py", "os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)"):
        "compile-cache entries: O_NOFOLLOW and non-blocking, then regular file, owner and mode checked on the "
        "descriptor and the read bounded (MAX_ENTRY_BYTES)",
    ("core/ebpf/cache.py", 'os.fdopen(fd, "rb")'): "the same compile-cache entry's descriptor",
    ("plugins/_tcptrace/program.py", "(HEADER_DIR / match.group(1)).read_text()"):
        "C headers shipped inside the package",
    ("plugins/disk_latency/collector.py", 'resources.files(__package__).joinpath("disk_latency.c").read_text()'):
        "C source shipped inside the package",
    ("plugins/nfs_latency/collector.py", "SOURCE.read_text()"): "C source shipped inside the package",
    ("plugins/objstore/collector.py", "SOURCE.read_text()"): "C source shipped inside the package",
}
#: The reader itself.
READER = "core/files.py"
#: Method names that open or read a file by path.
PATH_READS = {"open", "read_text", "read_bytes"}
#: module.function calls that open or parse a file.
MODULE_READS = {("os", "open"), ("os", "fdopen"), ("io", "open"), ("tomllib", "load"), ("json", "load"),
                ("pickle", "load"), ("builtins", "open")}
#: Names of the reader's functions, which a module may call bare once imported from the reader or the SDK.
READER_NAMES = {"read_limited", "read_file", "read_text", "iter_lines", "open_regular", "open_char_device"}
READER_MODULES = {"crusoe_metrics_exporter.files", "crusoe_metrics_exporter.sdk"}


def _sources() -> Iterator[Path]:
    for base in ("core", "plugins"):
        for path in sorted((REPO / base).rglob("*.py")):
            if "tests" not in path.relative_to(REPO).parts:
                yield path


def _raw_reads(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text()
    tree = ast.parse(text)
    imported_reader_names = {
        alias.asname or alias.name
        for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module in READER_MODULES
        for alias in node.names
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            raw = func.id == "open" or (func.id in READER_NAMES and func.id not in imported_reader_names)
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            raw = (owner, func.attr) in MODULE_READS or (func.attr in PATH_READS and owner not in ("os", "io"))
        else:
            raw = False
        if raw and not _writes(node, text):
            yield node.lineno, ast.get_source_segment(text, node) or ""


def _writes(call: ast.Call, text: str) -> bool:
    """An open for writing only (mode "w"/"a"/"x", or O_WRONLY): not a read."""
    func = call.func
    # Where the mode is: open(path, mode), os.fdopen(fd, mode), path.open(mode), or mode=.
    position = 0 if isinstance(func, ast.Attribute) and func.attr == "open" and not (
        isinstance(func.value, ast.Name) and func.value.id in ("os", "io")) else 1
    args = [*call.args[position:position + 1], *(k.value for k in call.keywords if k.arg == "mode")]
    modes = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if any(set(m) & set("wax") and "+" not in m for m in modes):
        return True
    return "O_WRONLY" in (ast.get_source_segment(text, call) or "")


def test_no_file_is_read_outside_the_reader() -> None:
    raw: list[str] = []
    used: set[tuple[str, str]] = set()
    for path in _sources():
        rel = str(path.relative_to(REPO))
        if rel == READER:
            continue
        for line, segment in _raw_reads(path):
            allowed = next((key for key in ALLOWED if key[0] == rel and segment.startswith(key[1])), None)
            if allowed is None:
                raw.append(f"{rel}:{line}: {segment}")
            else:
                used.add(allowed)
    assert not raw, ("files read without crusoe_metrics_exporter.files (use read_limited/read_file/read_text/"
                     "iter_lines, or the SDK's):\n" + "\n".join(raw))
    assert used == set(ALLOWED), f"stale ALLOWED entries: {sorted(set(ALLOWED) - used)}"


def test_the_walk_catches_each_way_of_reading(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, tomllib\nfrom pathlib import Path\n"
        "open('/proc/diskstats')\n"
        "Path('/proc/1/mounts').read_text()\n"
        "Path('/sys/kernel/btf/vmlinux').read_bytes()\n"
        "Path('/proc/stat').open('rb')\n"
        "os.open('/proc/meminfo', os.O_RDONLY)\n"
        "open('/var/lib/x', 'w')\n"
        "tomllib.load(fh)\n"
        "def read_text(p): ...\n"
        "read_text('/proc/self/status')\n"
        "open('/proc/stat', 'r+')\n"
    )
    assert [line for line, _ in _raw_reads(sample)] == [3, 4, 5, 6, 7, 9, 11, 12]
