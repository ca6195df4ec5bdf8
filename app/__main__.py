"""``python -m app`` is ``rr``."""

from __future__ import annotations

from app.cli import main

main()
