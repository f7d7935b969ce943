#!/usr/bin/env python3
"""Regenerate the README's configuration and metric reference from the code.

The tables come from the declarations themselves (core options and every
installed built-in plugin's MetricSpecs and ConfigOptions), so the README
cannot drift from what the exporter does. ``--check`` fails if the README is
stale; the test suite runs it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from crusoe_metrics_exporter.contract import ConfigOption, MetricSpec
from crusoe_metrics_exporter.host import OWN_DISTRIBUTION, discover, discover_services
from crusoe_metrics_exporter.meta import META_METRICS
from crusoe_metrics_exporter.naming import PREFIX
from crusoe_metrics_exporter.options import accepted_range, to_text
from crusoe_metrics_exporter.schema import config_options
from crusoe_metrics_exporter.settings import CORE_OPTIONS

README = Path(__file__).resolve().parent.parent / "README.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(option: ConfigOption) -> str:
    shown = to_text(option, option.default)
    return f"`{shown}`" if shown else "(empty)"


def options_table(section: str, options: tuple[ConfigOption, ...]) -> str:
    rows = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    for o in options:
        env = f"`{o.env}`" if o.env else ""
        bounds = accepted_range(o)
        meaning = f"{o.help} Accepted: {bounds}." if bounds else o.help
        rows.append(f"| `{section}.{o.name}` | {env} | {_default(o)} | {_cell(meaning)} |")
    return "\n".join(rows)


def _type(m: MetricSpec) -> str:
    if m.type == "counter" and not m.name.endswith("_total"):
        return "counter (exposed untyped, legacy name)"
    return m.type


def metrics_table(metrics: tuple[MetricSpec, ...]) -> str:
    rows = ["| metric | type | labels | help |", "|---|---|---|---|"]
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        rows.append(f"| `{PREFIX}{m.name}` | {_type(m)} | {labels} | {_cell(m.help)} |")
    return "\n".join(rows)


def generate() -> dict[str, str]:
    records = [r for r in discover() if r.distribution == OWN_DISTRIBUTION]
    missing = [r.name for r in records if r.spec is None]
    if missing:
        raise SystemExit(f"cannot document plugins that fail to load: {', '.join(missing)}")
    options = ["### `[exporter]`\n\n" + options_table("exporter", CORE_OPTIONS)]
    service_metrics = []
    for svc in discover_services():
        if svc.distribution != OWN_DISTRIBUTION:
            continue
        if svc.spec is None:
            raise SystemExit(f"cannot document the service {svc.name} that fails to load: {svc.reason}")
        declared = config_options(svc.spec.options)
        if declared:
            options.append(f"### `[{svc.name}]` (shared service: {svc.spec.description})\n\n"
                           + options_table(svc.name, declared))
        if svc.spec.metrics:
            service_metrics.append(f"### {svc.name} (shared service)\n\n{svc.spec.description}\n\n"
                                   + metrics_table(svc.spec.metrics))
    metrics = []
    for rec in records:
        assert rec.spec is not None
        declared = config_options(rec.spec.options)
        if declared:
            options.append(f"### `[plugins.{rec.name}]`\n\n" + options_table(f"plugins.{rec.name}", declared))
        metrics.append(f"### {rec.name}\n\n{rec.spec.description}\n\n" + metrics_table(rec.spec.metrics))
    metrics += service_metrics
    metrics.append("### exporter (core)\n\n" + metrics_table(META_METRICS))
    return {"options": "\n\n".join(options), "metrics": "\n\n".join(metrics)}


def splice(text: str, blocks: dict[str, str]) -> str:
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n)(?:.*?\n)?(<!-- END GENERATED: {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README has no generated block {name!r}")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)  # noqa: B023 - used at once
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = parser.parse_args()
    current = README.read_text()
    updated = splice(current, generate())
    if args.check:
        if updated != current:
            print("README.md reference tables are stale: run scripts/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
