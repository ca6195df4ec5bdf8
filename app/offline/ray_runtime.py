"""Joining or starting Ray for the optional ``[ray]`` extra, with one clear message when it is not installed."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

INSTALL_HINT = "Ray is not installed: pip install 'router-retriever[ray]' (or pip install -e '.[ray]' in a checkout)"


class RayMissingError(ImportError):
    """``--engine ray`` or ``rr serve-ray`` was asked for without the ``[ray]`` extra."""


def ensure_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (None: ``RAY_ADDRESS`` if set, else a new local Ray); True if this call started it.

    A Ray already initialised in this process (a test, a notebook) is used as it is.
    """
    try:
        import ray
    except ImportError as exc:
        raise RayMissingError(INSTALL_HINT) from exc
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    logger.info("connected to Ray: %s", ray.cluster_resources())
    return True
