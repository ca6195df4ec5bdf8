"""``rr``: the single command-line entry point (``rr = app.cli:main``)."""

from __future__ import annotations

from app.cli.commands import main

__all__ = ["main"]
