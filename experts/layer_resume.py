"""An adapter pass that starts where its adapter starts: at the base pass's hidden state entering that layer.

An adapter trained on the top layers only (``TrainConfig.top_layers``, PEFT's
``layers_to_transform``) leaves every layer below its first one exactly as the
base model computes it. A routed search embeds each query twice, first with
the base model (for the router) and then with the chosen expert's adapter, so
when the adapter starts at layer ``L`` the hidden state entering ``L`` is
already known from the first pass. :class:`LayerResume` keeps those states
for a moment (a small LRU keyed by text and token limit) and runs the adapter
pass from there: only the layers from ``L`` up are computed again.

The model is driven through its public structure only: ``model.embeddings``
(its output is replaced by the kept states, re-padded) and
``model.encoder.layer`` (the stack, run from ``L``); the model still makes its
own attention mask. Models without that structure (or adapters on every
layer) simply run the whole pass.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["LayerResume", "first_layer", "passes_from"]

#: A module name's layer number: ``encoder.layer.4.attention.self.query`` -> 4.
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def first_layer(module_names: Iterable[str]) -> int:
    """The lowest encoder layer an adapter touches; 0 when any module is outside the layer stack.

    >>> first_layer(["encoder.layer.4.attention.self.query", "encoder.layer.5.output.dense"])
    4
    >>> first_layer(["embeddings.word_embeddings", "encoder.layer.5.output.dense"])
    0
    """
    layers = []
    for name in module_names:
        found = _LAYER.search(name)
        if found is None:
            return 0
        layers.append(int(found.group(1)))
    return min(layers, default=0)


class LayerResume:
    """The hidden states entering one layer, kept from base passes, and adapter passes resumed from them.

    Not thread-safe on its own: the :class:`~experts.encoder.Encoder` calls it
    under its model lock, like the LoRA hooks.
    """

    def __init__(self, model: torch.nn.Module, *, size: int = 256) -> None:
        encoder = getattr(model, "encoder", None)
        stack = getattr(encoder, "layer", None)
        self._model = model
        self._stack = stack if isinstance(stack, torch.nn.ModuleList) and hasattr(model, "embeddings") else None
        self._size = size
        self._states: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()
        self._guard = threading.Lock()

    @property
    def supported(self) -> bool:
        """Whether the model has the structure a resumed pass needs."""
        return self._stack is not None and self._size > 0

    def known(self, texts: Sequence[str], limit: int, layer: int) -> bool:
        """Whether every text's state entering ``layer`` is kept (at this token limit)."""
        with self._guard:
            return all((text, limit, layer) in self._states for text in texts)

    @contextmanager
    def capturing(self, texts: Sequence[str], limit: int, layer: int, mask: torch.Tensor) -> Iterator[None]:
        """Keep, for each text of the pass run inside, the hidden state entering ``layer`` (its real tokens only)."""
        assert self._stack is not None  # callers check ``supported``
        seen: list[torch.Tensor] = []

        def hook(module, args, kwargs):
            seen.append(args[0] if args else kwargs["hidden_states"])

        handle = self._stack[layer].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        if not seen:
            return
        hidden = seen[0].detach()
        keep = mask.bool()
        with self._guard:
            for row, text in enumerate(texts):
                key = (text, limit, layer)
                self._states[key] = hidden[row][keep[row]].clone()
                self._states.move_to_end(key)
            while len(self._states) > self._size:
                self._states.popitem(last=False)

    @contextmanager
    def resumed(self, texts: Sequence[str], limit: int, layer: int, mask: torch.Tensor) -> Iterator[None]:
        """Inside: a forward pass of the model runs only layers ``layer``.. on the kept states of ``texts``.

        ``mask`` is the pass's attention mask (the states go where it is 1);
        the model's embedding output is replaced and its layer stack cut for
        the duration, then both are restored.
        """
        assert self._stack is not None  # callers check ``supported``
        with self._guard:
            states = [self._states[(text, limit, layer)] for text in texts]
        with passes_from(self._model, self._stack, layer, states, mask):
            yield


@contextmanager
def passes_from(
    model: Any, stack: torch.nn.ModuleList, layer: int, states: Sequence[torch.Tensor], mask: torch.Tensor
) -> Iterator[None]:
    """Inside: a forward pass of ``model`` runs only ``stack[layer:]``, on ``states`` (one per row, real tokens only).

    ``mask`` is the pass's attention mask (each row's state goes where it is 1); the model's embedding
    output is replaced and its layer stack (``model.encoder.layer``, which is ``stack`` outside) cut for the
    duration, then both are restored. Also used to train a top-layer adapter (:mod:`experts.train_prefix`).
    """
    keep = mask.bool()
    hidden = torch.zeros((*mask.shape, states[0].shape[-1]), dtype=states[0].dtype, device=states[0].device)
    for row, state in enumerate(states):
        hidden[row][keep[row]] = state

    def replace_output(module, args, output):
        return hidden

    handle = model.embeddings.register_forward_hook(replace_output)
    model.encoder.layer = torch.nn.ModuleList(list(stack)[layer:])
    try:
        yield
    finally:
        model.encoder.layer = stack
        handle.remove()
