#!/usr/bin/env python3
"""Regenerate crusoe-metrics-exporter.json from the system calls the exporter really makes.

    python3 deploy/seccomp/record.py IMAGE LOOP_DEVICE

Maintainer tool (root, podman; not run by the tests, which run the image
under the profile it wrote). It runs IMAGE plus strace, with the DaemonSet's
capabilities and mounts and seccomp unconfined, under ``strace -f``: the
exporter serves with every plugin (eBPF compilation included), is scraped in
every format, probes loopback targets, sees I/O on LOOP_DEVICE, and
``plugins``, ``doctor`` and the image's health check run too. The profile
allows the union of the calls seen plus :data:`BASELINE` (calls any Python
process may make on a path this workload did not take: signals, time,
memory, threads, polling) and denies everything else with EPERM.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "image"))
from build import podman, podman_env  # noqa: E402

PROFILE = HERE / "crusoe-metrics-exporter.json"

#: Harmless for an unprivileged process and plausible on paths the recording may not take.
BASELINE = (
    "brk", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "sched_yield",
    "sched_getaffinity", "getrandom", "madvise", "mmap", "munmap", "mprotect", "mremap", "membarrier", "rseq",
    "restart_syscall", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "tgkill",
    "kill", "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "futex",
    "set_robust_list", "get_robust_list", "set_tid_address", "clone", "clone3", "wait4", "waitid", "exit",
    "exit_group", "execve", "read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "close",
    "close_range", "dup", "dup2", "dup3", "fcntl", "ioctl", "pipe", "pipe2", "eventfd2", "epoll_create1",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect6", "openat", "open", "stat",
    "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat", "getcwd", "getdents64", "uname", "sysinfo", "prlimit64", "getrlimit", "socket", "socketpair",
    "connect", "bind", "listen", "accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg",
    "recvmmsg", "setsockopt", "getsockopt", "getsockname", "getpeername", "shutdown", "mkdir", "mkdirat", "unlink",
    "unlinkat", "rename", "renameat", "renameat2", "symlink", "symlinkat", "chmod", "fchmod", "ftruncate", "fsync",
    "fdatasync", "umask", "arch_prctl", "prctl", "capget",
)
#: Never allowed whatever a recording shows: the exporter must not need them.
NEVER = {"mount", "umount2", "ptrace", "kexec_load", "init_module", "finit_module", "delete_module", "unshare",
         "setns", "pivot_root", "keyctl", "add_key", "request_key", "reboot", "swapon", "swapoff", "acct"}

STRACE_LINE = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)")


def syscalls_in(trace: Path) -> set[str]:
    names = set()
    for path in trace.parent.glob(trace.name + "*"):
        for line in path.read_text(errors="replace").splitlines():
            m = STRACE_LINE.match(line)
            if m:
                names.add(m.group(1))
    return names


def strace_image(image: str) -> str:
    tag = image.rsplit(":", 1)[0] + "-strace:record"
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {image}\nUSER 0\nRUN apt-get update && apt-get install -y --no-install-recommends strace "
            "&& rm -rf /var/lib/apt/lists/*\n")
        podman("build", "--quiet", "--network", "host", "--tag", tag, ctx, capture=True)
    return tag


def run(image: str, loop: str, out: Path) -> set[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = [
        "--network", "host", "--pid", "host", "--user", "0:0", "--cap-drop", "all",
        "--cap-add", "BPF,PERFMON,NET_RAW,SYS_PTRACE", "--security-opt", "seccomp=unconfined",
        "--read-only", "--read-only-tmpfs=false",
        "-v", "/proc:/host/proc:ro", "-v", "/:/host/root:ro,rslave", "-v", "/sys:/sys:ro",
        "-v", "/lib/modules:/lib/modules:ro", "-v", "/usr/src:/usr/src:ro", "-v", f"{out}:/trace",
        "--mount", "type=tmpfs,destination=/tmp", "--mount", "type=tmpfs,destination=/var/lib/crusoe-metrics-exporter",
        "-e", "HOST_PROC_PATH=/host/proc", "-e", "HOST_ROOT_PATH=/host/root", "-e", f"PORT={port}",
        "-e", "NFS_SERVER_IPS=127.0.0.1", "-e", "OBJSTORE_ENDPOINT_FQDN=localhost",
        "-e", "OBJSTORE_ENDPOINT_PORT=443,80",
        "-e", "PROBE_INTERVAL=5s", "-e", "PROBE_JITTER=0s", "-e", "PROBE_TIMEOUT=2s",
        "--entrypoint", "strace",
    ]
    strace = ["-f", "-qq", "-o"]
    cli = "/opt/crusoe-metrics-exporter/bin/crusoe-metrics-exporter"
    for name, args in (("plugins", ["plugins", "--json"]), ("doctor", ["doctor"])):
        podman("run", "--rm", *common, image, *strace, f"/trace/{name}", cli, *args, capture=True, check=False)
    name = f"cme-record-{os.getpid()}"
    podman("run", "-d", "--name", name, *common, image, *strace, "/trace/serve", cli, "serve",
           "--set", f"plugins.disk_latency.device_include=^{loop}$", capture=True)
    try:
        base = f"http://127.0.0.1:{port}"
        # Compiling under strace is slow.
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        for _ in range(3):
            subprocess.run(["dd", "if=/dev/zero", f"of=/dev/{loop}", "bs=4k", "count=256", "oflag=direct",
                            "status=none"], check=True)
            for path, accept in (("/metrics", "text/plain"), ("/metrics", "application/openmetrics-text"),
                                 ("/", "text/html"), ("/plugins.json", "*/*"), ("/health", "*/*")):
                req = urllib.request.Request(base + path, headers={"Accept": accept, "Accept-Encoding": "gzip"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
            time.sleep(6)
        podman("exec", name, "/opt/crusoe-metrics-exporter/bin/python", "-c",
               f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health')", capture=True)
    finally:
        podman("stop", "-t", "10", name, capture=True, check=False)
        podman("rm", "-f", name, capture=True, check=False)
    return syscalls_in(out / "plugins") | syscalls_in(out / "doctor") | syscalls_in(out / "serve")


def main() -> None:
    image, loop = sys.argv[1], sys.argv[2]
    os.environ.update(podman_env())
    traced = strace_image(image)
    with tempfile.TemporaryDirectory() as tmp:
        seen = run(traced, loop, Path(tmp))
    allowed = sorted((seen | set(BASELINE)) - NEVER)
    profile = {
        "comment": "crusoe-metrics-exporter: the system calls recorded by deploy/seccomp/record.py plus its BASELINE; "
                   "everything else fails with EPERM. Regenerate with that script.",
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}],
    }
    PROFILE.write_text(json.dumps(profile, indent=2) + "\n")
    print(f"{PROFILE}: {len(allowed)} system calls ({len(seen)} recorded, {sorted(seen & NEVER)} refused)")


if __name__ == "__main__":
    main()
