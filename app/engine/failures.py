"""The experts that are not serving, and why: one record that the engine writes and everyone else reads.

Two kinds, told apart because they mean different things to an operator:

- **failed**: published (the registry lists it) but not loaded, because its
  files failed to load at start-up or failed during a search and it was taken
  out of service. It keeps the service from being ready (``/readyz``) and a
  request naming it is a 503 with the reason, until it is published again or
  removed.
- **unavailable**: found under the data root but never published (no registry
  yet and it did not load, or ``SearchEngine.open`` for the CLI): reported,
  not served, and not a reason to be unready.

The engine records both (it loads experts and sees searches fail); the
publisher records start-up failures of published experts through it; the API
and the console only read it. Reads never lock: each change publishes a new
dict.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = ["ExpertFailures"]


class ExpertFailures:
    """``failed`` and ``unavailable`` experts by name, with the reason each is not serving.

    >>> failures = ExpertFailures()
    >>> failures.mark_failed("cacm", "checksum mismatch in dense.faiss")
    >>> dict(failures.failed)
    {'cacm': 'checksum mismatch in dense.faiss'}
    >>> failures.clear("cacm"); dict(failures.failed)
    {}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}

    @property
    def failed(self) -> Mapping[str, str]:
        """Published experts that do not serve, with why."""
        return self._failed

    @property
    def unavailable(self) -> Mapping[str, str]:
        """Experts found on disk but never published because they did not load, with why."""
        return self._unavailable

    def mark_failed(self, name: str, reason: str) -> None:
        with self._lock:
            self._failed = {**self._failed, name: reason}

    def mark_unavailable(self, name: str, reason: str) -> None:
        with self._lock:
            self._unavailable = {**self._unavailable, name: reason}

    def clear(self, name: str) -> None:
        """Forget ``name``: it was published again (and loaded) or removed."""
        with self._lock:
            self._failed = {key: value for key, value in self._failed.items() if key != name}
            self._unavailable = {key: value for key, value in self._unavailable.items() if key != name}
