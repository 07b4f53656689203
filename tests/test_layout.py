"""Which top-level packages may import which: the product never imports tests or benchmarks, and tests never import benchmarks.

Benchmarks run on the test harness (the Kubernetes API emulator, the controller process fixture),
so `bench` → `tests` is the one direction between the two; the benchmarks' own tests live in bench/tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("controller", "events", "templates", "runtimes")
FORBIDDEN = {**{package: {"tests", "bench"} for package in PRODUCT}, "tests": {"bench"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert offenders == {}, f"{package} may not import {sorted(FORBIDDEN[package])}"
