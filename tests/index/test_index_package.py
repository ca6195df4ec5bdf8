"""The package surface: a sorted ``__all__`` that imports, and no forbidden dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import index


def test_all_is_sorted_and_complete() -> None:
    assert index.__all__ == sorted(index.__all__)
    for name in index.__all__:
        assert getattr(index, name) is not None, name
    public = {name for name in vars(index) if not name.startswith("_") and name[0].isupper()}
    assert public <= set(index.__all__) | {"annotations"}


def test_index_does_not_import_torch_or_sibling_packages() -> None:
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, index; "
        "forbidden = ('torch', 'transformers', 'peft', 'fastapi', 'experts', 'router', 'app'); "
        "bad = [m for m in forbidden if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
