"""The README's reference tables are generated from the declarations and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_reference_tables_are_current() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_reference.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_seed_environment_variable_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    for var in ("PORT", "HOST_PROC_PATH", "MOUNTSTATS_PATH", "NFS_SERVER_IPS", "NFS_TARGET_PORTS",
                "NFS_ENABLE_VOLUME_ID", "NFS_MOUNT_REFRESH_INTERVAL", "PROBE_INTERVAL", "OBJSTORE_ENDPOINT_FQDN",
                "OBJSTORE_ENDPOINT_IPS", "OBJSTORE_ENDPOINT_PORT", "LOG_LEVEL"):
        assert f"`{var}`" in readme, var
