"""Inside the guest, right after boot: install the shared checkout, run the request, write its exit code.

Run by the image's init as ``/opt/cme/venv/bin/python guest_boot.py SRC OUT``
with SRC the read-only 9p share of the checkout and OUT the per-run
directory. The image already holds every dependency; the project itself is
"installed" by linking it into the venv's site-packages the way the
package-dir mapping lays it out (core/ -> crusoe_metrics_exporter,
plugins/ -> crusoe_metrics_exporter.plugins) plus a dist-info with the entry
points, so plugins are discovered exactly as after ``pip install`` and
nothing is written into the checkout. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

PACKAGE = "crusoe_metrics_exporter"


def install_checkout(src: Path) -> str:
    """Link the checkout into site-packages with entry points; returns the project version."""
    site = Path(sysconfig.get_paths()["purelib"])
    pkg = site / PACKAGE
    pkg.mkdir(exist_ok=True)
    for entry in (src / "core").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "plugins").symlink_to(src / "plugins")

    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    match = re.search(r'^__version__ = "([^"]+)"', (src / "core" / "__init__.py").read_text(), re.MULTILINE)
    version = match.group(1) if match else "0"
    dist = site / f"{PACKAGE}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {version}\n")
    sections = [("console_scripts", project.get("scripts", {})), *project.get("entry-points", {}).items()]
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items()) + "\n"
        for group, entries in sections
    ))
    (dist / "INSTALLER").write_text("cme-guest-boot\n")
    bindir = Path(sys.executable).parent
    for name, target in project.get("scripts", {}).items():
        module, _, func = target.partition(":")
        script = bindir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
        script.chmod(0o755)
    return version


def main() -> int:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    exit_file = out / "exit_code"
    status = 255
    try:
        request = json.loads((out / "request.json").read_text())
        version = install_checkout(src)
        # No udev in the guest, so nothing loads drivers for the devices QEMU
        # attached beyond those in the initramfs: the NVMe controller's here.
        subprocess.run(["modprobe", "-q", "-a", "nvme"], check=False)
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            # The checkout is read-only: no bytecode, no pytest cache in it.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "CME_TEST_GUEST": "1",
            "CME_GUEST_OUT": str(out),
            **request.get("env", {}),
        }
        release = os.uname().release
        print(f"cme-guest: kernel {release}, crusoe-metrics-exporter {version} from the shared checkout", flush=True)
        status = subprocess.run(request["argv"], cwd=src, env=env, check=False).returncode
        if status < 0:  # killed by a signal: report it the way a shell does
            status = 128 - status
    except Exception as exc:  # whatever went wrong must reach the host as text and a status
        print(f"cme-guest: could not run the request: {type(exc).__name__}: {exc}", flush=True)
    finally:
        exit_file.write_text(f"{status}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
