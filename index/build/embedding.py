"""The embed function's contract: passages -> (n, dim) finite, L2-normalised float32, checked on every call.

The batch job embeds its chunks, a live upsert its documents and a merge of a
lossy index its surviving documents through the same contract; apart from
the job (:mod:`index.build.indexing`) so that :mod:`index.live` uses it without
importing the job.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from index.errors import DimensionMismatchError, InvalidParameterError

__all__ = ["EmbedFn", "checked_embed"]

EmbedFn = Callable[[list[str]], np.ndarray]
"""Embeds passages: a list of n strings -> (n, dim) float32, L2-normalised."""

_NORM_TOLERANCE = 1e-3


def checked_embed(embed: EmbedFn, passages: list[str], dim: int) -> np.ndarray:
    """Call ``embed`` and check its contract: (n, dim) finite, L2-normalised float32."""
    vectors = np.asarray(embed(passages))
    if vectors.shape != (len(passages), dim):
        raise DimensionMismatchError(
            f"embed returned shape {vectors.shape} for {len(passages)} passages; expected ({len(passages)}, {dim})"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    if not np.isfinite(norms).all() or np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
        raise InvalidParameterError(
            f"embed must return finite, L2-normalised vectors; norms ranged over [{norms.min()}, {norms.max()}]"
        )
    return vectors
