"""Writing configuration: the starter file and the effective view.

tomli-w writes values; the comments (each option's help and its environment
variable) are interleaved by hand because TOML writers drop comments.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from crusoe_metrics_exporter import __version__
from crusoe_metrics_exporter.contract import ConfigOption
from crusoe_metrics_exporter.host import declared_options
from crusoe_metrics_exporter.options import to_toml_value
from crusoe_metrics_exporter.settings import all_sections

if TYPE_CHECKING:
    from crusoe_metrics_exporter.app import Exporter


def _sections(exporter: Exporter) -> dict[str, tuple[ConfigOption, ...]]:
    return all_sections(declared_options(exporter.records), declared_options(exporter.service_records))


def _line(option: ConfigOption, value: Any) -> str:
    rendered = to_toml_value(option, value)
    if isinstance(rendered, list):
        # One line per option (tomli-w would spread arrays over several); a
        # JSON array of strings or integers is also a valid TOML inline array.
        return f"{option.name} = {json.dumps(rendered, ensure_ascii=False)}"
    return tomli_w.dumps({option.name: rendered}).rstrip("\n")


def starter_toml(exporter: Exporter) -> str:
    """A complete configuration: every section and option at its default."""
    out = [
        f"# crusoe-metrics-exporter {__version__} configuration.",
        "# Precedence: command-line flags > environment variables > this file > defaults.",
        "",
    ]
    for section, options in _sections(exporter).items():
        out.append(f"[{section}]")
        for option in options:
            help_text = option.help + (f" (env {option.env})" if option.env else "")
            out.append(f"# {help_text}")
            out.append(_line(option, option.default))
        out.append("")
    return "\n".join(out)


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _effective(exporter: Exporter) -> dict[str, list[tuple[ConfigOption, Any, str]]]:
    settings = exporter.settings
    tables: dict[str, dict[str, Any]] = {"exporter": settings.core, **settings.services}
    tables.update({f"plugins.{name}": values for name, values in settings.plugins.items()})
    out: dict[str, list[tuple[ConfigOption, Any, str]]] = {}
    for section, options in _sections(exporter).items():
        values = tables.get(section, {})
        out[section] = [
            (o, values.get(o.name, o.default), settings.sources.get(f"{section}.{o.name}", "default")) for o in options
        ]
    return out


def effective_toml(exporter: Exporter) -> str:
    """The effective configuration as TOML, each value followed by its source."""
    path = exporter.settings.config_path
    out = [f"# effective configuration (config file: {path if path else 'none'})", ""]
    for section, rows in _effective(exporter).items():
        out.append(f"[{section}]")
        for option, value, source in rows:
            out.append(f"{_line(option, value)}  # {source}")
        out.append("")
    return "\n".join(out)


def effective_json(exporter: Exporter) -> str:
    doc = {
        section: {o.name: {"value": to_toml_value(o, v), "source": s} for o, v, s in rows}
        for section, rows in _effective(exporter).items()
    }
    return json.dumps(doc, indent=2) + "\n"
