"""Volume ids from NFS devices: the seed rule, custom patterns, settings validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crusoe_metrics_exporter.options import SettingError
from crusoe_metrics_exporter.settings import resolve
from crusoe_metrics_exporter.targets.volumes import compile_volume_pattern, volume_id, volume_pattern


def _targets(environ: dict[str, str]) -> dict[str, object]:
    settings, _ = resolve({}, environ=environ)
    return settings.targets


def test_default_pattern_is_the_seed_rule() -> None:
    pattern = volume_pattern(_targets({}))
    assert pattern is not None
    dev = "nfs.crusoecloudcompute.com:/volumes/00000000-0000-0000-0000-000000000001"
    assert volume_id(dev, pattern) == "00000000-0000-0000-0000-000000000001"
    # The seed kept subdirectories as part of the id; so do we by default.
    assert volume_id("10.0.0.1:/volumes/abc/sub/dir", pattern) == "abc/sub/dir"
    assert volume_id("server:/export/home", pattern) is None
    assert volume_id("server:/volumes/", pattern) is None


def test_disabled_gives_no_pattern_and_no_id() -> None:
    targets = _targets({"NFS_ENABLE_VOLUME_ID": "false"})
    assert volume_pattern(targets) is None
    assert volume_id("server:/volumes/abc", None) is None


def test_custom_pattern_with_group() -> None:
    pattern = volume_pattern({"nfs_enable_volume_id": True, "nfs_volume_id_pattern": r":/exports/(?P<volume_id>[^/]+)"})
    assert pattern is not None
    assert volume_id("srv:/exports/team-a/data", pattern) == "team-a"


def test_pattern_without_group_is_rejected() -> None:
    with pytest.raises(SettingError, match="named group"):
        compile_volume_pattern(r"/volumes/(.+)$")
    with pytest.raises(SettingError, match="regular expression"):
        compile_volume_pattern(r"/volumes/(?P<volume_id>")


def test_settings_resolution_rejects_pattern_without_group(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[targets]\nnfs_volume_id_pattern = "/volumes/(.+)$"\n')
    with pytest.raises(SettingError, match="volume_id"):
        resolve({}, config_path=cfg, environ={})
    # Disabled ids make the pattern irrelevant, so it must not block startup.
    resolve({}, config_path=cfg, environ={"NFS_ENABLE_VOLUME_ID": "false"})


def test_compiled_pattern_is_a_pattern() -> None:
    assert isinstance(compile_volume_pattern(r"(?P<volume_id>x)"), re.Pattern)
