"""The import structure: each package imports only the packages below it.

catalog (names and specs) < methods (hosts, methods) < tasks (OpenMMLab configurations) <
benchmark (runner, aggregation, leaderboard, CLI) < pipelines (DVC stages). Every import
statement counts, at module level or inside a function.
"""
from __future__ import annotations

import pkgutil
from pathlib import Path

from pipelines.stages import PACKAGES, _imports

ROOT = Path(__file__).resolve().parent.parent
LAYER = {package: i for i, package in enumerate(PACKAGES)}


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            names.append(info.name)
    return names


def test_the_packages_are_layered():
    assert PACKAGES == ("catalog", "methods", "tasks", "benchmark", "pipelines")
    upward = []
    for module in project_modules():
        here = LAYER[module.split(".")[0]]
        for target in _imports(module):
            if LAYER[target.split(".")[0]] > here:
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_family_files_do_not_import_the_methods_above_them():
    """methods/hosts (the families) sit below the methods and the checkpoint code."""
    for module in project_modules():
        if module.startswith("methods.hosts"):
            above = [t for t in _imports(module)
                     if t.startswith("methods.") and not t.startswith("methods.hosts")]
            assert not above, (module, above)
