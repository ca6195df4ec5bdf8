"""Training checkpoints: where an interrupted :func:`~experts.train.train_adapter` run picks up again.

Every ``every`` optimiser steps the run writes, atomically (temp file, fsync,
rename), what its next step depends on: the adapter's trainable weights, the
optimiser's and the learning-rate schedule's state, the losses so far and
torch's RNG state (dropout draws from it). The batch schedule, the mined
negatives and the pseudo pairs are seeded, so a run started again with the
same inputs rebuilds them as they were. Resumed from a checkpoint, a run on
CPU ends with the same adapter as one never interrupted (with the same torch
thread count, as for any run).

A checkpoint records a fingerprint of its inputs (the recipe, the pairs, the
document matrix's shape); one written for other inputs is ignored (logged), so
a retrained corpus never resumes from a stale run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experts.atomic import atomic_write
from experts.pairs import TrainingPair

__all__ = ["CHECKPOINT_EVERY", "inputs_fingerprint", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

#: Steps between checkpoints: at most this many steps are trained again after a kill (300 steps take 2.5-5 min).
CHECKPOINT_EVERY = 25


def inputs_fingerprint(config: Any, pairs: Sequence[TrainingPair], documents_shape: tuple[int, ...]) -> str:
    """A digest of what a run trains on: the recipe, every pair (query and positives) and the documents' shape."""
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(config), sort_keys=True, default=str).encode())
    digest.update(repr(tuple(documents_shape)).encode())
    for pair in pairs:
        digest.update(pair.query.encode())
        digest.update(repr(tuple(pair.positives)).encode())
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    *,
    fingerprint: str,
    step: int,
    weights: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    losses: Sequence[float],
) -> None:
    """Write the state after ``step`` optimiser steps to ``path`` (atomically: a reader sees the old or the new)."""
    import torch

    state = {
        "fingerprint": fingerprint,
        "step": step,
        "weights": {name: tensor.detach().clone() for name, tensor in weights.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "losses": list(losses),
        "rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The state saved at ``path`` for these inputs, or None (no file, unreadable, or written for other inputs)."""
    if path is None or not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: train from the start rather than fail
        logger.warning("ignoring the training checkpoint %s: cannot read it (%s)", path, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        logger.warning("ignoring the training checkpoint %s: it was written for other training inputs", path)
        return None
    return state
