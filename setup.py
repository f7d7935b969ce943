"""Package list for setuptools, derived from the tree (pyproject.toml holds everything else).

The repository keeps the core in core/ and the plugins in plugins/; pyproject's
package-dir installs both under crusoe_metrics_exporter. Every directory with
an __init__.py below them is a package, so adding a plugin folder needs no
edit here (its entry point in pyproject.toml is what makes it a plugin).
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"crusoe_metrics_exporter": Path("core"), "crusoe_metrics_exporter.plugins": Path("plugins")}


def packages() -> list[str]:
    found = []
    for name, root in ROOTS.items():
        for init in sorted(root.rglob("__init__.py")):
            found.append(".".join([name, *init.parent.relative_to(root).parts]))
    return found


setup(packages=packages())
