"""One local Ray for the whole package (starting it takes seconds); Ray is a dev dependency, so no skip."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """``ray.init`` on this machine: 2 CPUs, as in CI, no dashboard."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()
