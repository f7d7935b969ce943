"""Command line of the guest runner (run from the repository root).

    python -m tests.vm build                 build the guest image unless cached; print where it is
    python -m tests.vm status                the recipe hash, the cache directory, whether it is built
    python -m tests.vm run [opts] -- CMD...  boot the guest, run CMD in the checkout there, exit with its status
    python -m tests.vm test [PYTEST ARGS]    the guest suite: pytest -m kernel_vm on the guest test files

``test`` is the second half of ``make test``. When the guest cannot run at
all (no QEMU, the image does not build) it says so in a line starting with
``!!!``; with ``CI=true`` that is a failure (exit 1), as a skipped eBPF test is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from tests.vm import image as image_mod
from tests.vm import qemu

#: Where guest tests live: files named test_*_guest.py (each marks its tests kernel_vm).
GUEST_TEST_GLOBS = ("plugins/*/tests/test_*_guest.py", "tests/**/test_*_guest.py")
GUEST_SUITE_TIMEOUT = 900.0


def guest_test_files(root: Path = image_mod.REPO_ROOT) -> list[str]:
    found = {str(p.relative_to(root)) for pattern in GUEST_TEST_GLOBS for p in root.glob(pattern)}
    return sorted(found)


def _build(log: Path | None) -> image_mod.Image:
    cached = image_mod.cached_image()
    if cached is not None:
        return cached
    print(f"guest image: building {image_mod.recipe_hash()} in {image_mod.cache_root()} "
          f"(a few minutes, once per recipe){f'; log: {log}' if log else ''}", flush=True)
    started = time.monotonic()
    built = image_mod.ensure_image(log)
    print(f"guest image: ready after {time.monotonic() - started:.0f} s: {built.root}", flush=True)
    return built


def cmd_build(args: argparse.Namespace) -> int:
    try:
        built = _build(args.log)
    except image_mod.ImageError as exc:
        print(f"guest image: {exc}", file=sys.stderr)
        return 1
    print(built.root)
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    cached = image_mod.cached_image()
    print(f"recipe hash: {image_mod.recipe_hash()}")
    print(f"cache: {image_mod.cache_root()}")
    print(f"image: {cached.root if cached else 'not built'}")
    print(f"accelerator: {'kvm' if qemu.kvm_usable() else 'tcg (software emulation)'}")
    return 0


def _boot(argv: list[str], timeout: float, env: dict[str, str], keep: bool, log: Path | None) -> int:
    built = _build(log)
    options = qemu.BootOptions(timeout=timeout, env=env)
    result = qemu.run(built, argv, options)
    try:
        if result.timed_out:
            print(f"guest: killed after the {timeout:.0f} s timeout (the command did not finish)", file=sys.stderr)
        elif not (result.out_dir / "exit_code").is_file():
            print("guest: powered off without reporting an exit code (see the console above)", file=sys.stderr)
        print(f"guest: exit status {result.exit_code} after {result.seconds:.0f} s", flush=True)
        return result.exit_code
    finally:
        if keep:
            print(f"guest: run directory kept: {result.out_dir}")
        else:
            shutil.rmtree(result.out_dir, ignore_errors=True)


def cmd_run(args: argparse.Namespace) -> int:
    argv = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    if not argv:
        print("run: give the command to run in the guest after --", file=sys.stderr)
        return 2
    try:
        return _boot(argv, args.timeout, {}, args.keep, args.log)
    except (image_mod.ImageError, qemu.GuestError) as exc:
        print(f"guest: {exc}", file=sys.stderr)
        return 1


def cmd_test(args: argparse.Namespace) -> int:
    ci = os.environ.get("CI") == "true"
    files = guest_test_files()
    if not files:
        print("guest tests: no test_*_guest.py files found", file=sys.stderr)
        return 1
    pytest_args = [a for a in args.pytest_args if a != "--"]
    argv = ["python", "-m", "pytest", "-p", "no:cacheprovider", "-m", "kernel_vm", "-o", "junit_logging=system-out",
            "--junitxml=/mnt/out/junit.xml", *pytest_args, *files]
    env = {"CI": "true"} if ci else {}
    try:
        problem = qemu.qemu_missing()
        if problem:
            raise qemu.GuestError(problem)
        return _boot(argv, args.timeout, env, args.keep, args.log)
    except (image_mod.ImageError, qemu.GuestError) as exc:
        print(f"!!! GUEST TESTS SKIPPED: {exc} !!!", file=sys.stderr)
        if ci:
            print("guest tests: CI=true, so a guest suite that cannot run is a failure", file=sys.stderr)
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, default=None, help="write the image build's output to this file")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("build", help="build the guest image unless cached").set_defaults(func=cmd_build)
    sub.add_parser("status", help="show the cache state").set_defaults(func=cmd_status)
    run = sub.add_parser("run", help="run a command in the guest")
    run.add_argument("--timeout", type=float, default=600.0, help="hard limit in seconds (default 600)")
    run.add_argument("--keep", action="store_true", help="keep the run directory (exit code, junit.xml)")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)
    test = sub.add_parser("test", help="run the guest suite")
    test.add_argument("--timeout", type=float, default=GUEST_SUITE_TIMEOUT,
                      help=f"hard limit in seconds (default {GUEST_SUITE_TIMEOUT:.0f})")
    test.add_argument("--keep", action="store_true", help="keep the run directory (exit code, junit.xml)")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    test.set_defaults(func=cmd_test)
    args = parser.parse_args(argv)
    if args.log is None:
        args.log = image_mod.cache_root() / f"build-{image_mod.recipe_hash()}.log"
        args.log.parent.mkdir(parents=True, exist_ok=True)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
