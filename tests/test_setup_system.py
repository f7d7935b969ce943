"""Every program the test suite starts is installed by the project's own set-up.

A later machine starts bare: what a test runs on the host must come from a
package ``scripts/setup-system.sh --test`` installs, and what a guest test
runs from a package the guest image (``tests/vm/image.py``) has. The
commands are found in the source (argv literals handed to subprocess and the
suite's wrappers, ``shutil.which`` names, command constants), so a new tool
cannot slip in unnoticed. The scan is a net, not a proof: a command built
at run time or written inside a shell string escapes it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.vm import image

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "setup-system.sh"
#: Where code that starts programs on the test machine lives.
SCANNED = ("tests", "plugins", "benchmarks", "deploy")
#: Calls whose list arguments are command lines: subprocess's and the suite's wrappers around it.
ARGV_CALLS = {"run", "Popen", "check_output", "check_call", "call", "popen", "exec_argv", "wrap", "_run"}
#: Calls whose first positional arguments are the command line itself (``_run("ip", "link", ...)``).
VARARGS_CALLS = {"_run", "sh"}
COMMAND = re.compile(r"^[a-z][a-z0-9_.+-]*$")
#: Commands every Debian system has before anything is installed (Essential packages, the shell).
ESSENTIAL = {"sh", "bash", "true", "false", "cat", "echo", "sleep", "ls", "rm", "mkdir", "mv", "cp", "chmod",
             "grep", "sed", "tar", "gzip", "env", "kill", "test", "uname", "id", "stat", "sync", "which"}
#: The project's own command (the venv's entry point), not a system package's.
OURS = {"crusoe-metrics-exporter"}
#: Where the guest image's programs come from (each package must be in tests/vm/image.py's PACKAGES).
GUEST_PROVIDERS = {
    "python3": "python3", "nvme": "nvme-cli", "bpftool": "bpftool", "tcpdump": "tcpdump", "fio": "fio",
    "ping": "iputils-ping", "rpcbind": "rpcbind", "exportfs": "nfs-kernel-server", "rpc.nfsd": "nfs-kernel-server",
    "rpc.mountd": "nfs-kernel-server", "mount.nfs": "nfs-common", "rpc.statd": "nfs-common",
    "ip": "iproute2", "tc": "iproute2", "ss": "iproute2", "nstat": "iproute2",
    "modprobe": "kmod", "pgrep": "procps", "sysctl": "procps",
    "losetup": "util-linux", "dmesg": "util-linux", "fsfreeze": "util-linux", "setpriv": "util-linux",
    "unshare": "util-linux", "prlimit": "util-linux", "mountpoint": "util-linux", "mount": "mount", "umount": "mount",
    "mkfs.ext4": "e2fsprogs", "dd": "coreutils", "du": "coreutils", "truncate": "coreutils",
}


def setup_commands() -> dict[str, str]:
    """command -> package, from the ``"package: commands"`` entries of setup-system.sh."""
    provided: dict[str, str] = {}
    for package, commands in re.findall(r'^\s*"([a-z0-9][a-z0-9.+-]*):([^"]*)"', SETUP.read_text(), re.MULTILINE):
        for command in commands.split():
            provided[command] = package
    return provided


def _is_guest_code(path: Path) -> bool:
    return path.name.endswith("_guest.py") or path.name.startswith("guest")


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` (also ``NAME = shutil.which(..) or "text"``)."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.BoolOp):
                value = value.values[-1]
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found[node.targets[0].id] = value.value
    return found


def _word(node: ast.expr, constants: dict[str, str]) -> str | None:
    """A string literal, or a module constant holding one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _argv_heads(elements: list[ast.expr], constants: dict[str, str]) -> list[str]:
    """The programs of an argv: its first word and, for ``ip netns exec NS PROGRAM``, that program too.

    An argv that starts with ``*prefix`` or a computed value (``sys.executable``,
    the CLI's path) names no program we could check.
    """
    words = [_word(element, constants) for element in elements]
    heads = [words[0]] if words and words[0] is not None else []
    if words[:3] == ["ip", "netns", "exec"] and len(words) > 4 and words[4] is not None:
        heads.append(words[4])
    return [head for head in heads if COMMAND.match(head)]


def _commands_in(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    constants = _constants(tree)
    # for tool in ("podman", "runc"): shutil.which(tool)
    loops = {node.target.id: [word for e in node.iter.elts if (word := _word(e, {})) is not None]
             for node in ast.walk(tree) if isinstance(node, ast.For) and isinstance(node.target, ast.Name)
             and isinstance(node.iter, (ast.Tuple, ast.List))}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        heads: list[str] = []
        if name == "which" and node.args:
            arg = node.args[0]
            words = loops.get(arg.id, []) if isinstance(arg, ast.Name) and arg.id in loops else [_word(arg, constants)]
            heads += [word for word in words if word is not None and COMMAND.match(word)]
        if name in ARGV_CALLS:
            for arg in node.args:
                if isinstance(arg, (ast.List, ast.Tuple)):
                    heads += _argv_heads(arg.elts, constants)
        if name in VARARGS_CALLS:
            heads += _argv_heads(list(node.args), constants)
        for head in heads:
            yield head, node.lineno


def started_commands() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(host commands, guest commands), each command -> where it is started."""
    host: dict[str, list[str]] = {}
    guest: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" in path.parts or path == Path(__file__):
                continue
            where = guest if _is_guest_code(path) else host
            for command, line in _commands_in(path):
                where.setdefault(command, []).append(f"{path.relative_to(REPO)}:{line}")
    return host, guest


def test_the_scan_finds_the_commands_we_know_the_suite_starts() -> None:
    host, guest = started_commands()
    # If these vanish the scan has gone blind, and the checks below would pass on nothing.
    assert {"prometheus", "promtool", "prometheus-node-exporter", "losetup", "fio", "nft", "nstat", "kubectl",
            "podman", "runc", "mmdebstrap", "qemu-system-x86_64", "systemd-analyze", "openssl", "ping"} <= set(host)
    assert {"nvme", "bpftool", "rpc.nfsd", "exportfs", "tc", "ss"} <= set(guest)


def test_setup_system_installs_every_command_the_host_suite_starts() -> None:
    provided = setup_commands()
    host, _ = started_commands()
    missing = {command: where[:3] for command, where in host.items()
               if command not in provided and command not in ESSENTIAL | OURS}
    assert not missing, (
        "started by the tests but installed by no package in scripts/setup-system.sh "
        f"(add a \"package: command\" entry): {missing}")


def test_the_guest_image_has_every_command_the_guest_suite_starts() -> None:
    _, guest = started_commands()
    unknown = {command: where[:3] for command, where in guest.items()
               if command not in GUEST_PROVIDERS and command not in ESSENTIAL | OURS}
    assert not unknown, f"say in GUEST_PROVIDERS which package gives the guest these commands: {unknown}"
    absent = {command: GUEST_PROVIDERS[command] for command in guest
              if command in GUEST_PROVIDERS and GUEST_PROVIDERS[command] not in image.PACKAGES
              and GUEST_PROVIDERS[command] not in ("coreutils", "mount", "util-linux")}
    assert not absent, f"the guest image (tests/vm/image.py PACKAGES) lacks the packages of {absent}"
