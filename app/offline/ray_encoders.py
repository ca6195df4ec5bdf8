"""``rr index --engine ray``: what an expert's build needs to embed on Ray (the optional ``[ray]`` extra).

:mod:`index.build.ray_data` runs the job and knows nothing of encoders; this
module says what each Ray actor holds: the same base encoder the settings
describe (checked against the driver's weight fingerprint, so every actor
embeds exactly what a local build would) and, for a symmetric expert with a
trained adapter, that adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from app.engine.loading import open_encoder
from app.settings import Settings
from experts import Encoder, ExpertDir, Manifest, ModelLoadError
from index import BuildReport
from index.build.ray_data import RayEngine, build_index_on_ray

logger = logging.getLogger(__name__)

_ADAPTER = "index"


def actor_embedder(
    settings: Settings, *, max_length: int, fingerprint: str, adapter: Path | None
) -> Callable[[list[str]], np.ndarray]:
    """Runs once in each Ray actor: load the encoder (and adapter), return its document embed function."""
    encoder = open_encoder(settings)
    if encoder.fingerprint != fingerprint:
        raise ModelLoadError(
            f"the Ray actor loaded base encoder {encoder.model_id!r} with weights {encoder.fingerprint[:12]}, "
            f"but the build was started with weights {fingerprint[:12]}: give every node the same model files"
        )
    if adapter is not None:
        encoder.add_adapter(_ADAPTER, adapter)
    expert = _ADAPTER if adapter is not None else None
    return partial(_embed, encoder, expert=expert, max_length=max_length)


def _embed(encoder: Encoder, texts: list[str], *, expert: str | None, max_length: int) -> np.ndarray:
    return encoder.embed(texts, expert=expert, max_length=max_length)


@dataclass(frozen=True)
class RayIndexing:
    """The Ray engine of ``index_expert``: the settings each actor loads its encoder from, and the pool."""

    settings: Settings
    engine: RayEngine = field(default_factory=RayEngine)

    def builder(self, expert: ExpertDir, manifest: Manifest, encoder: Encoder) -> Callable[..., BuildReport]:
        """``build_index`` with the embedding on Ray, for this expert (same arguments, no ``embed``)."""
        symmetric = manifest.adapter.embeds_documents
        threads = max(1, int(self.engine.cpus_per_actor))
        device = "cuda" if self.engine.gpus_per_actor > 0 else self.settings.device
        actor_settings = self.settings.model_copy(update={"torch_threads": threads, "device": device})
        embedder = partial(
            actor_embedder,
            actor_settings,
            max_length=manifest.max_length,
            fingerprint=encoder.fingerprint,
            adapter=expert.adapter_path if symmetric else None,
        )
        return partial(build_index_on_ray, embedder=embedder, engine=self.engine)
