"""Serving on Ray Serve (the optional ``[ray]`` extra): ``serve run app.ray_serve:app_builder``.

The deployment's names are imported on first use, so that importing one module
of this package (say :mod:`app.ray_serve.published`) does not start Ray Serve.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RoutedSearch", "app_builder", "build_app", "published_experts"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from app.ray_serve import deployment

        return getattr(deployment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
