"""The package boundaries of DESIGN.md, checked on the source: who may import what, and explicit public APIs."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top-level imports each package must never make.
FORBIDDEN = {
    "experts": {"app", "router", "index", "faiss", "sqlite3", "fastapi"},
    "router": {"app", "experts", "index", "torch", "transformers", "peft", "faiss", "sqlite3", "fastapi"},
    "index": {"app", "experts", "router", "torch", "transformers", "peft", "fastapi"},
    "app": {"faiss", "sqlite3"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {file: names for file, names in offenders.items() if names} == {}


@pytest.mark.parametrize("package", ["experts", "router", "index"])
def test_public_api_is_sorted_and_importable(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ lists {name!r}, which it does not define"


def test_only_app_imports_fastapi_and_only_experts_imports_torch() -> None:
    for path in sorted(ROOT.glob("*/**/*.py")):
        package = path.relative_to(ROOT).parts[0]
        if package in {"tests", "bench", ".venv"} or package.startswith("."):
            continue
        roots = imported_roots(path)
        if "torch" in roots or "peft" in roots:
            assert package == "experts", f"{path.relative_to(ROOT)} imports torch/peft"
