"""Run every benchmark under benchmarks/ (``make bench``).

Each ``*_bench.py`` script is run in its own process, one after the other
(the machine is shared; parallel benchmarks would measure each other).
Extra arguments are passed to every script, e.g. ``--quick``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for script in sorted(here.glob("*_bench.py")):
        print(f"=== {script.name}", flush=True)
        if subprocess.call([sys.executable, str(script), *sys.argv[1:]]) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
