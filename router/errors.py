"""Errors raised by the ``router`` package.

::

    RouterError
    ├── NoExpertsError            (also LookupError)  routing with no expert loaded
    └── PilotError                (also ValueError)   pilots of the wrong shape or empty
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class of every error raised by ``router``."""


class NoExpertsError(RouterError, LookupError):
    """There is no expert to route to."""


class PilotError(RouterError, ValueError):
    """Pilot embeddings that cannot be used (empty, wrong dimension, not finite)."""
