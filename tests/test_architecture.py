"""The package boundaries of DESIGN.md, checked on the source: who may import what, and explicit public APIs."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
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


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, anywhere in it (``from a.b import c`` gives ``a.b``)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def _under(module: str, prefixes: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


#: Inside ``app``: what each role's sub-package must never import (the layer map of app/__init__.py).
APP_LAYERS = {
    "engine": {"app.api", "app.ray_serve", "app.cli", "app.offline", "app.publishing",
               "fastapi", "starlette", "ray", "typer", "prometheus_client"},
    "publishing": {"app.api", "app.ray_serve", "app.cli", "app.offline", "fastapi", "starlette", "typer"},
    "offline": {"app.api", "app.ray_serve", "app.cli"},
    "api": {"app.ray_serve", "app.cli", "app.offline"},
    "ray_serve": {"app.cli", "app.offline"},
}  # fmt: skip  # a table: one layer per row, as app/__init__.py draws them
#: Inside ``index``: store <- build <- live, and the shared small modules at the top import none of the three.
INDEX_LAYERS = {
    "store": {"index.build", "index.live"},
    "build": {"index.live"},
}
INDEX_SHARED_FORBIDDEN = {"index.store", "index.build", "index.live"}
#: Layer leaks the move into sub-packages exposed, each removed by its own later commit.
KNOWN_LEAKS: set[tuple[str, str]] = set()


def _layer_offenders(folder: Path, forbidden: set[str]) -> dict[str, list[str]]:
    offenders = {}
    for path in sorted(folder.rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        bad = sorted(m for m in imported_modules(path) if _under(m, forbidden) and (relative, m) not in KNOWN_LEAKS)
        if bad:
            offenders[relative] = bad
    return offenders


@pytest.mark.parametrize("layer", sorted(APP_LAYERS))
def test_app_layers_import_one_way(layer: str) -> None:
    assert _layer_offenders(ROOT / "app" / layer, APP_LAYERS[layer]) == {}


@pytest.mark.parametrize("layer", sorted(INDEX_LAYERS))
def test_index_layers_import_one_way(layer: str) -> None:
    assert _layer_offenders(ROOT / "index" / layer, INDEX_LAYERS[layer]) == {}


def test_index_shared_modules_import_no_layer() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if _under(m, INDEX_SHARED_FORBIDDEN))
        for path in sorted((ROOT / "index").glob("*.py"))
        if path.name != "__init__.py"
    }
    assert {file: names for file, names in offenders.items() if names} == {}


def test_only_main_imports_the_cli() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ("app", "experts", "router", "index")
        for path in (ROOT / package).rglob("*.py")
        if any(_under(m, {"app.cli"}) for m in imported_modules(path))
    }
    assert {p for p in importers if not p.startswith("app/cli/")} == {"app/__main__.py"}


def test_known_leaks_are_still_there() -> None:
    """A leak removed from the code must leave KNOWN_LEAKS too, so the list only ever shrinks."""
    for file, module in KNOWN_LEAKS:
        assert module in imported_modules(ROOT / file), f"{file} no longer imports {module}: drop it from KNOWN_LEAKS"


def test_the_engine_loads_no_web_framework_ray_typer_or_prometheus() -> None:
    """Transitively, not just its own import lines: ``rr search`` and the offline jobs never load the HTTP stack."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import app.engine, app.publishing\n"
        "for package in (app.engine, app.publishing):\n"
        "    for module in pkgutil.iter_modules(package.__path__):\n"
        "        importlib.import_module(f'{package.__name__}.{module.name}')\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'ray', 'typer', 'prometheus_client', 'uvicorn') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_two_atomic_write_modules_are_one_api() -> None:
    """experts/ and index/ may not import each other, so each holds a copy; the copies never drift apart."""
    assert (ROOT / "experts" / "atomic.py").read_text() == (ROOT / "index" / "atomic.py").read_text()
