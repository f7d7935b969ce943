"""The public plugin SDK: one module, complete, cheap to import, and the only one built-ins use."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crusoe_metrics_exporter import sdk

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "plugins"
PUBLIC = ("crusoe_metrics_exporter.sdk",)
#: Plugin-side packages a built-in may import besides the SDK (its own modules, shared plugin helpers).
PLUGIN_SIDE = "crusoe_metrics_exporter.plugins"


def _plugin_sources() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if "tests" not in p.relative_to(PLUGINS).parts)


def _core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the exporter's package that is neither the SDK nor plugin-side."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "crusoe_metrics_exporter":
                # "from crusoe_metrics_exporter import host" names a module too.
                modules = [f"crusoe_metrics_exporter.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("crusoe_metrics_exporter.") and " " not in node.value):
            # importlib.import_module("crusoe_metrics_exporter.host") and the like.
            modules = [node.value.split(":")[0]]
        for module in modules:
            if module != "crusoe_metrics_exporter" and not module.startswith("crusoe_metrics_exporter."):
                continue
            if module in PUBLIC or module == PLUGIN_SIDE or module.startswith(PLUGIN_SIDE + "."):
                continue
            found.append((getattr(node, "lineno", 0), module))
    return found


def test_the_scan_sees_plugin_sources() -> None:
    sources = _plugin_sources()
    assert len(sources) > 20
    assert any(p.name == "collector.py" and p.parent.name == "disk_stats" for p in sources)


def test_builtin_plugins_import_only_the_sdk_from_the_core() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in _plugin_sources()
        for line, module in _core_imports(path)
    ]
    assert not offenders, "built-in plugins must import the core only through crusoe_metrics_exporter.sdk:\n" + (
        "\n".join(offenders)
    )


def test_the_import_check_catches_each_form(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text(
        "import crusoe_metrics_exporter.host\n"
        "from crusoe_metrics_exporter.contract import Sample\n"
        "from crusoe_metrics_exporter import runner\n"
        "import importlib\n"
        "importlib.import_module('crusoe_metrics_exporter.settings')\n"
        "from crusoe_metrics_exporter.sdk import Sample as S\n"
        "from crusoe_metrics_exporter.plugins.disk_stats import parser\n"
    )
    assert [m for _, m in _core_imports(source)] == [
        "crusoe_metrics_exporter.host",
        "crusoe_metrics_exporter.contract",
        "crusoe_metrics_exporter.runner",
        "crusoe_metrics_exporter.settings",
    ]


@pytest.mark.parametrize("name", sdk.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(sdk, name)
    assert value is not None
    lazy = sdk._LAZY.get(name)
    if lazy is not None:
        module, attribute = lazy
        assert value is getattr(importlib.import_module(module), attribute)


def test_lazy_table_and_type_checking_imports_agree() -> None:
    """Names mypy sees (the TYPE_CHECKING block) are exactly the names resolved at run time on first use."""
    tree = ast.parse(Path(sdk.__file__).read_text())
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                typed |= {alias.asname or alias.name for alias in stmt.names}
    assert typed == set(sdk._LAZY)
    assert set(sdk._LAZY) <= set(sdk.__all__)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Settings'"):
        _ = sdk.Settings  # type: ignore[attr-defined]


def test_importing_the_sdk_loads_neither_ebpf_nor_target_discovery() -> None:
    code = (
        "import sys\n"
        "import crusoe_metrics_exporter.sdk as sdk\n"
        "heavy = [m for m in sys.modules if m.startswith(('crusoe_metrics_exporter.ebpf', "
        "'crusoe_metrics_exporter.targets'))]\n"
        "assert not heavy, heavy\n"
        "sdk.BpfSpec\n"
        "assert 'crusoe_metrics_exporter.ebpf' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


#: The SDK's names as of this version. The stability promise: within a major
#: version none of them goes away. A new public name is added here too.
PUBLIC_NAMES = frozenset({
    "CONTRACT_VERSION", "DEFAULT_DEVICE_INCLUDE", "DEFAULT_READ_LIMIT", "EBPF_SERVICE", "TARGETS_SERVICE",
    "AttachCandidate", "AttachMethod", "BpfMap", "BpfSpec", "BpfUnavailable", "BtfEnum", "BtfOffset", "BtfTracepoint",
    "Collector", "ConfigOption", "KernelConstant", "RawTracepoint", "tracepoint_has_field",
    "DeviceFilter", "DeviceOptions", "DoctorCheck", "EbpfRuntime", "ErrorReporter", "FileContent", "HistogramValue",
    "Kprobe", "LoadedBpf", "MetricSpec", "MetricType", "NfsMount", "NfsServer", "NoOptions", "ObjstoreEndpoint",
    "OptionError", "OptionType", "PluginContext", "PluginSpec", "ProblemLog", "ProgramSpec", "ProgramStats",
    "ProgramStatus", "Sample", "ServiceContext", "ServiceSpec", "Support", "TargetsService", "Tracepoint",
    "Unreadable", "bucket_index", "cumulative_buckets", "device_names", "geometric_bounds", "grant_hint",
    "has_capability", "hookimpl", "normalize_address", "option", "parse_device_table", "read_limited",
    "tracepoint_exists", "unescape_mount_field", "unreadable", "verify_only", "volume_id", "want_macro",
    # robustness (#16): bounded reads of files and device nodes, a rate-limited log
    "LogBudget", "open_char_device", "read_file", "read_text",
})


def test_no_public_name_goes_away_and_every_new_one_is_recorded() -> None:
    removed, unrecorded = PUBLIC_NAMES - set(sdk.__all__), set(sdk.__all__) - PUBLIC_NAMES
    assert not removed and not unrecorded, f"removed: {sorted(removed)}; not recorded here: {sorted(unrecorded)}"


#: The core modules that own the rules and the exposition, the command line and what the SDK shares with
#: plugins: they may not know any plugin (not even in an example or a docstring).
RULE_MODULES = ("naming.py", "settings.py", "exposition.py", "textformat.py", "meta.py", "runner.py", "cli.py",
                "devices.py", "options.py", "contract.py", "sdk.py")


def test_the_rule_modules_name_no_builtin_plugin_or_metric() -> None:
    from crusoe_metrics_exporter.host import discover

    builtins = [r for r in discover() if r.builtin]
    assert {"disk_stats", "nfs_latency", "nvme"} <= {r.name for r in builtins}
    words = {r.name for r in builtins} | {m.name for r in builtins if r.spec is not None for m in r.spec.metrics}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b")
    found = [
        f"core/{module}:{number}: {match.group(0)}"
        for module in RULE_MODULES
        for number, line in enumerate((REPO / "core" / module).read_text().splitlines(), 1)
        for match in pattern.finditer(line)
    ]
    assert not found, "the core names built-in plugins or their metrics:\n" + "\n".join(found)
