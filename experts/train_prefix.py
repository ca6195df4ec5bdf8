"""Training a top-layer adapter from the hidden states its frozen layers give, computed once per query.

An adapter on the encoder's top layers only (``TrainConfig.top_layers``) leaves every layer below
its first one frozen, so what those layers make of a training query never changes: the serving
pass (:mod:`experts.layer_resume`) already starts the expert's pass from the base pass's state
entering the first adapted layer. Training can do the same. :class:`FrozenPrefix` runs the frozen
layers once per distinct query, in inference mode and as the service runs them (eval mode: no
dropout, exactly the states the adapter will see when serving), keeps each query's state, and each
training step then runs only the adapted layers, forward and backward. Dropout stays on in those.

Measured (docs/benchmarks.md, section 19): 40 steps of 64 cranfield span queries on one core took
12.3 s instead of 14.3 (1.16x, the prefix pass included); the rest of a step is the adapted layers'
forward and backward, a fifth of it LoRA's and BERT's dropout. Off by default
(``TrainConfig.frozen_prefix``) until the quality of experts trained this way is measured: the frozen
layers then run without dropout, which changes the recipe.

The model is driven through its public structure only (``model.embeddings``, whose output is
replaced, and ``model.encoder.layer``, the stack that is cut), as in :mod:`experts.layer_resume`;
:func:`frozen_prefix` returns None for a model without it, which then trains the whole pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from experts.layer_resume import passes_from

#: Rows per inference pass when the frozen layers run over the training queries.
_PREFIX_ROWS = 64


def frozen_prefix(model: torch.nn.Module, first: int) -> FrozenPrefix | None:
    """A :class:`FrozenPrefix` below layer ``first`` of ``model``; None where the model has no such structure."""
    encoder = getattr(model, "encoder", None)
    stack = getattr(encoder, "layer", None)
    if not isinstance(stack, torch.nn.ModuleList) or not hasattr(model, "embeddings") or not 0 < first < len(stack):
        return None
    return FrozenPrefix(model, first)


class FrozenPrefix:
    """The states entering layer ``first`` of each training query (its real tokens only), and passes from there.

    Build it on the plain model, before the adapter is injected, and :meth:`compute` the queries; then
    ``with prefix.resumed(ids, mask):`` around a forward pass of the adapted model runs only the layers
    from ``first`` up on those queries' states.
    """

    def __init__(self, model: torch.nn.Module, first: int) -> None:
        self._model: Any = model
        self._stack: torch.nn.ModuleList = model.encoder.layer  # type: ignore[assignment, union-attr]
        self.first = first
        self._states: dict[tuple[int, ...], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    def compute(self, tokenizer, token_ids: Sequence[Sequence[int]]) -> None:
        """Run the frozen layers once over every distinct query (token ids, special tokens included)."""
        todo = sorted({tuple(ids) for ids in token_ids} - self._states.keys(), key=len)
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.inference_mode(), self._frozen_layers_only():
                for start in range(0, len(todo), _PREFIX_ROWS):
                    group = todo[start : start + _PREFIX_ROWS]
                    batch = tokenizer.pad({"input_ids": [list(ids) for ids in group]}, return_tensors="pt")
                    hidden = self._model(**batch).last_hidden_state
                    for row, ids in enumerate(group):
                        self._states[ids] = hidden[row, : len(ids)].clone()
        finally:
            self._model.train(was_training)

    @contextmanager
    def resumed(self, token_ids: Sequence[Sequence[int]], mask: torch.Tensor) -> Iterator[None]:
        """Inside: a forward pass over these queries (padded as ``mask`` says) runs only the layers from ``first``."""
        with passes_from(self._model, self._stack, self.first, [self._states[tuple(ids)] for ids in token_ids], mask):
            yield

    @contextmanager
    def _frozen_layers_only(self) -> Iterator[None]:
        """The model's layer stack cut to the layers below ``first`` for the duration (module names unchanged)."""
        encoder = self._model.encoder
        encoder.layer = torch.nn.ModuleList(list(self._stack)[: self.first])
        try:
            yield
        finally:
            encoder.layer = self._stack
