"""``python -m app`` is ``rr``."""

from __future__ import annotations

from app.cli.commands import main

main()
