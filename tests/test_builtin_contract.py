"""Every registered plugin honours the contract: the same checks for built-ins and third parties."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys

import pytest
from helpers.builtins import builtin_plugins, plugin_folders

from crusoe_metrics_exporter.host import ENTRY_POINT_GROUP, discover

RECORDS = discover()
NAMES = [r.name for r in RECORDS]


@pytest.mark.parametrize("name", NAMES)
def test_plugin_loads_and_validates(name: str) -> None:
    rec = next(r for r in RECORDS if r.name == name)
    assert rec.failed_phase not in ("load", "validate"), rec.reason
    assert rec.spec is not None
    assert rec.spec.description
    assert any(m.error_counter for m in rec.spec.metrics), "every plugin declares a collection-error counter"


@pytest.mark.parametrize("name", NAMES)
def test_plugin_imports_without_bcc(name: str) -> None:
    [ep] = [e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == name]
    # A None entry in sys.modules makes "import bcc" raise ImportError, as on
    # a host without python3-bpfcc.
    code = (
        "import sys; sys.modules['bcc'] = None\n"
        f"import importlib; m = importlib.import_module({ep.value!r})\n"
        "spec = m.crusoe_metrics_exporter_plugin()\n"
        "assert spec.name, spec\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_builtins_are_registered_through_the_entry_point_group() -> None:
    builtins = {r.name for r in RECORDS if r.builtin}
    # Every plugin folder is registered, and the installed metadata is current.
    assert builtins == builtin_plugins() == plugin_folders()
