"""Volume ids from NFS devices: the seed rule, custom patterns, settings validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crusoe_metrics_exporter.app import Exporter
from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.settings import Overrides
from crusoe_metrics_exporter.targets.directory import TargetDirectory
from crusoe_metrics_exporter.targets.service import TargetOptions
from crusoe_metrics_exporter.targets.volumes import compile_volume_pattern, volume_id
from crusoe_metrics_exporter.testing import options_for


def _pattern(environ: dict[str, str], **values: str) -> re.Pattern[str] | None:
    return TargetDirectory(options_for(TargetOptions, values, environ), Path("/proc")).volume_pattern


def test_default_pattern_is_the_seed_rule() -> None:
    pattern = _pattern({})
    assert pattern is not None
    dev = "nfs.crusoecloudcompute.com:/volumes/00000000-0000-0000-0000-000000000001"
    assert volume_id(dev, pattern) == "00000000-0000-0000-0000-000000000001"
    # The seed kept subdirectories as part of the id; so do we by default.
    assert volume_id("10.0.0.1:/volumes/abc/sub/dir", pattern) == "abc/sub/dir"
    assert volume_id("server:/export/home", pattern) is None
    assert volume_id("server:/volumes/", pattern) is None


def test_disabled_gives_no_pattern_and_no_id() -> None:
    assert _pattern({"NFS_ENABLE_VOLUME_ID": "false"}) is None
    assert volume_id("server:/volumes/abc", None) is None


def test_custom_pattern_with_group() -> None:
    pattern = _pattern({}, nfs_volume_id_pattern=r":/exports/(?P<volume_id>[^/]+)")
    assert pattern is not None
    assert volume_id("srv:/exports/team-a/data", pattern) == "team-a"


def test_pattern_without_group_is_rejected() -> None:
    with pytest.raises(ValueError, match="named group"):
        compile_volume_pattern(r"/volumes/(.+)$")
    with pytest.raises(SettingError, match=r"nfs_volume_id_pattern='/volumes/\(\?P<volume_id>': expected a valid "
                                           r"regular expression"):
        options_for(TargetOptions, {"nfs_volume_id_pattern": r"/volumes/(?P<volume_id>"})


def test_settings_resolution_rejects_pattern_without_group(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[targets]\nnfs_volume_id_pattern = "/volumes/(.+)$"\n')
    with pytest.raises(SettingError, match=r"^invalid \[targets\] nfs_volume_id_pattern='/volumes/\(\.\+\)\$': "
                                           r"expected a regular expression with a named group \(\?P<volume_id>"):
        Exporter.from_environment(cfg, Overrides({}), {"HOST_PROC_PATH": "/proc"}, [])
    # Disabled ids make the pattern irrelevant, so it must not block startup.
    Exporter.from_environment(cfg, Overrides({}), {"HOST_PROC_PATH": "/proc", "NFS_ENABLE_VOLUME_ID": "false"}, [])


def test_compiled_pattern_is_a_pattern() -> None:
    assert isinstance(compile_volume_pattern(r"(?P<volume_id>x)"), re.Pattern)
