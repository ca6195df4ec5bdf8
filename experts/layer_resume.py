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
layer) simply run the whole pass. Which pass resumes is the calling thread's
state, so passes on several threads share the model at once.
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


class _ResumableStack(torch.nn.ModuleList):
    """The model's layer stack, iterated from the layer the calling thread resumes at (from 0 in other threads).

    It holds the same layer modules under the same names (``encoder.layer.4...``): only
    iteration, which is how the model's forward runs its layers, starts later.
    """

    def __init__(self, layers: Iterable[torch.nn.Module], local: threading.local) -> None:
        super().__init__(layers)
        self._local = local

    def __iter__(self) -> Iterator[torch.nn.Module]:
        layers = iter(self._modules.values())
        for _ in range(getattr(self._local, "start", 0)):
            next(layers, None)
        return layers


class LayerResume:
    """The hidden states entering one layer, kept from base passes, and adapter passes resumed from them.

    Thread-safe: which pass keeps states and which one resumes (and from
    where) is state of the calling thread, so resumed and whole passes run on
    several threads at once over the one model. For that the model is set up
    once, at construction: its layer stack becomes a :class:`_ResumableStack`
    (same modules, same names), each layer gets a pre-hook that keeps its input
    when the calling thread asks for it, and ``model.embeddings`` a hook that
    hands out the calling thread's kept states instead of its output while it resumes.
    """

    def __init__(self, model: torch.nn.Module, *, size: int = 256) -> None:
        encoder = getattr(model, "encoder", None)
        stack = getattr(encoder, "layer", None)
        embeddings = getattr(model, "embeddings", None)
        self._size = size
        self._states: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()
        self._guard = threading.Lock()
        # Per thread: .start (the layer its pass resumes at), .states (the pass's embedding output, replaced),
        # .capture (the layer whose input its pass keeps) and .seen (that input).
        self._local = threading.local()
        self._supported = type(stack) is torch.nn.ModuleList and isinstance(embeddings, torch.nn.Module) and size > 0
        if not self._supported:
            return
        assert (
            encoder is not None and isinstance(stack, torch.nn.ModuleList) and isinstance(embeddings, torch.nn.Module)
        )
        encoder.layer = _ResumableStack(stack, self._local)
        embeddings.register_forward_hook(self._replace_output)
        for index, layer in enumerate(stack):
            layer.register_forward_pre_hook(self._keep_input(index), with_kwargs=True)

    @property
    def supported(self) -> bool:
        """Whether the model has the structure a resumed pass needs."""
        return self._supported

    def _replace_output(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        return getattr(self._local, "states", None)  # None keeps the embeddings' own output

    def _keep_input(self, index: int):
        def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
            if getattr(self._local, "capture", None) == index:
                self._local.seen = args[0] if args else kwargs["hidden_states"]

        return hook

    def kept(self, texts: Sequence[str], limit: int, layer: int) -> list[torch.Tensor] | None:
        """Each text's state entering ``layer`` (at this token limit), or None unless every one is kept."""
        with self._guard:
            states = [self._states.get((text, limit, layer)) for text in texts]
        if any(state is None for state in states):
            return None
        return [state for state in states if state is not None]

    @contextmanager
    def capturing(self, texts: Sequence[str], limit: int, layer: int, mask: torch.Tensor) -> Iterator[None]:
        """Keep, for each text of the pass this thread runs inside, the hidden state entering ``layer`` (its real tokens only)."""
        assert self._supported  # callers check ``supported``
        self._local.capture, self._local.seen = layer, None
        try:
            yield
            hidden = self._local.seen
        finally:
            self._local.capture, self._local.seen = None, None
        if hidden is None:
            return
        hidden, keep = hidden.detach(), mask.bool()
        with self._guard:
            for row, text in enumerate(texts):
                key = (text, limit, layer)
                self._states[key] = hidden[row][keep[row]].clone()
                self._states.move_to_end(key)
            while len(self._states) > self._size:
                self._states.popitem(last=False)

    @contextmanager
    def resumed(self, states: Sequence[torch.Tensor], layer: int, mask: torch.Tensor) -> Iterator[None]:
        """Inside: a forward pass of the model in this thread runs only layers ``layer``.. on ``states`` (from :meth:`kept`).

        ``mask`` is the pass's attention mask (each row's state goes where it is 1).
        """
        assert self._supported  # callers check ``supported``
        self._local.states, self._local.start = _padded(states, mask), layer
        try:
            yield
        finally:
            self._local.states, self._local.start = None, 0


def _padded(states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """One row per state (its real tokens only), placed where ``mask`` is 1, zeros elsewhere."""
    keep = mask.bool()
    hidden = torch.zeros((*mask.shape, states[0].shape[-1]), dtype=states[0].dtype, device=states[0].device)
    for row, state in enumerate(states):
        hidden[row][keep[row]] = state
    return hidden


@contextmanager
def passes_from(
    model: Any, stack: torch.nn.ModuleList, layer: int, states: Sequence[torch.Tensor], mask: torch.Tensor
) -> Iterator[None]:
    """Inside: a forward pass of ``model`` runs only ``stack[layer:]``, on ``states`` (one per row, real tokens only).

    ``mask`` is the pass's attention mask (each row's state goes where it is 1); the model's embedding
    output is replaced and its layer stack (``model.encoder.layer``, which is ``stack`` outside) cut for the
    duration, then both are restored: for a model no other thread runs meanwhile (training a top-layer
    adapter on its own copy, :mod:`experts.train_prefix`).
    """
    hidden = _padded(states, mask)

    def replace_output(module, args, output):
        return hidden

    handle = model.embeddings.register_forward_hook(replace_output)
    model.encoder.layer = torch.nn.ModuleList(list(stack)[layer:])
    try:
        yield
    finally:
        model.encoder.layer = stack
        handle.remove()
