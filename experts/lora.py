"""LoRA adapters applied at forward time to one plain transformers model, by forward hooks.

Why not ``PeftModel``: PEFT keeps every adapter inside wrapper modules and, on
each pass, walks every module and every adapter (``disable_adapter()`` for a
base pass, ``set_adapter`` for an adapter pass, a per-adapter row loop in every
layer for a mixed batch). With 50 adapters loaded its base pass cost 9.8x a
plain one (docs/benchmarks.md, section 5). Here the model is never rewrapped:

- a **base pass** is the plain model (each hook returns at once);
- an **adapter pass** adds ``x @ A.T @ B.T`` in each targeted linear layer,
  touching only that adapter's tensors;
- a **mixed batch** (a different adapter per row) gathers each row's ``A``
  and ``B`` and runs one batched product per layer (``torch.bmm``), so its
  cost does not grow with the number of adapters in the batch, let alone loaded.

The weights stay in PEFT's on-disk format (:func:`experts.adapters.read_lora_weights`);
tests/experts/test_lora.py checks the embeddings against ``peft.PeftModel``.
Which adapters a pass uses is state of the calling thread, so passes on
several threads may run at once, each with its own adapters. Adding and
removing adapters must not overlap a pass (it changes the model's hooks): the
:class:`~experts.encoder.Encoder` holds its model lock alone for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from experts.adapters import LoraWeights
from experts.errors import AdapterMismatchError


@dataclass(frozen=True)
class _Plan:
    """Which adapter each row of the running pass uses."""

    single: str | None  # every row uses this adapter
    names: tuple[str, ...] = ()  # mixed: the distinct adapters, in slot order
    rows: torch.Tensor | None = None  # mixed: the batch rows that use an adapter (None: all of them)
    slots: torch.Tensor | None = None  # mixed: for each of those rows, its adapter's slot in ``names``


class LoraLayers:
    """Named LoRA adapters over one model's linear layers, chosen per pass with :meth:`applied`.

    >>> layers = LoraLayers(model)
    >>> layers.add("scifact", read_lora_weights(path))
    >>> with layers.applied(["scifact", None]):   # row 0 with the adapter, row 1 without
    ...     hidden = model(**batch).last_hidden_state
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._modules = dict(model.named_modules())
        self._adapters: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._local = threading.local()  # .plan: the running pass's plan, per thread

    @property
    def names(self) -> tuple[str, ...]:
        """Loaded adapters, sorted."""
        return tuple(sorted(self._adapters))

    def add(self, name: str, weights: LoraWeights) -> None:
        """Hold ``weights`` under ``name``, moved to the model's device and dtype; hook any new target layer."""
        if name in self._adapters:
            raise ValueError(f"adapter {name!r} is already loaded; remove it first")
        placed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module_name, (a, b) in weights.modules.items():
            module = self._modules.get(module_name)
            weight = getattr(module, "weight", None)
            in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
            if module is None or in_features is None or out_features is None:
                raise AdapterMismatchError(f"LoRA targets {module_name!r}, which is not a linear layer of this model")
            if (a.shape[1], b.shape[0]) != (in_features, out_features):
                raise AdapterMismatchError(
                    f"LoRA for {module_name!r} maps {a.shape[1]} -> {b.shape[0]} features, the layer {in_features} -> {out_features}"
                )
            dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32
            device = weight.device if isinstance(weight, torch.Tensor) else torch.device("cpu")
            placed[module_name] = (a.to(device, dtype), b.to(device, dtype))
        self._adapters[name] = placed
        for module_name in placed:
            if module_name not in self._hooks:
                self._hooks[module_name] = self._modules[module_name].register_forward_hook(self._hook(module_name))

    def remove(self, name: str) -> None:
        """Drop an adapter and unhook the layers no remaining adapter targets."""
        del self._adapters[name]
        still = {module for modules in self._adapters.values() for module in modules}
        for module_name in [m for m in self._hooks if m not in still]:
            self._hooks.pop(module_name).remove()

    @contextmanager
    def applied(self, rows: Sequence[str | None]) -> Iterator[None]:
        """Within the block, a forward pass in this thread uses ``rows[i]``'s adapter (None: none) on batch row ``i``."""
        outer = getattr(self._local, "plan", None)
        self._local.plan = self._plan_for(rows)
        try:
            yield
        finally:
            self._local.plan = outer

    def _plan_for(self, rows: Sequence[str | None]) -> _Plan | None:
        names = tuple(dict.fromkeys(row for row in rows if row is not None))
        unknown = [name for name in names if name not in self._adapters]
        if unknown:
            raise KeyError(f"adapters not loaded: {unknown}")
        if not names:
            return None
        if len(names) == 1 and None not in rows:
            return _Plan(single=names[0])
        slot = {name: i for i, name in enumerate(names)}
        used = [i for i, row in enumerate(rows) if row is not None]
        device = next(iter(self._adapters[names[0]].values()))[0].device
        rows_t = None if len(used) == len(rows) else torch.tensor(used, device=device)
        slots = torch.tensor([slot[row] for row in rows if row is not None], device=device)  # one per used row
        return _Plan(single=None, names=names, rows=rows_t, slots=slots)

    def _hook(self, module_name: str):
        def hook(
            module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            plan = getattr(self._local, "plan", None)
            if plan is None:
                return None
            x = inputs[0]
            if plan.single is not None:
                pair = self._adapters[plan.single].get(module_name)
                if pair is None:
                    return None
                a, b = pair
                return output + torch.nn.functional.linear(torch.nn.functional.linear(x, a), b)
            return _mixed(output, x, [self._adapters[name].get(module_name) for name in plan.names], plan)

        return hook


def _mixed(
    output: torch.Tensor, x: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor] | None], plan: _Plan
) -> torch.Tensor | None:
    """Add each row's own LoRA: gather per-row ``A`` and ``B`` and run two batched products.

    Adapters that do not target this layer, and ranks that differ, are padded
    with zero matrices, which adds exactly nothing. ``x`` is (n, ..., in).
    """
    if all(pair is None for pair in pairs):
        return None
    template = next(pair for pair in pairs if pair is not None)
    rank = max(pair[0].shape[0] for pair in pairs if pair is not None)
    in_features, out_features = template[0].shape[1], template[1].shape[0]
    if all(pair is not None and pair[0].shape[0] == rank for pair in pairs):  # the usual case: one op each
        a_stack = torch.stack([pair[0] for pair in pairs])  # type: ignore[index]
        b_stack = torch.stack([pair[1] for pair in pairs])  # type: ignore[index]
    else:
        a_stack = x.new_zeros((len(pairs), rank, in_features))
        b_stack = x.new_zeros((len(pairs), out_features, rank))
        for i, pair in enumerate(pairs):
            if pair is not None:
                a, b = pair
                a_stack[i, : a.shape[0]] = a
                b_stack[i, :, : a.shape[0]] = b
    rows_x = x if plan.rows is None else x.index_select(0, plan.rows)
    shape = rows_x.shape
    flat = rows_x.reshape(shape[0], -1, shape[-1])  # (m, tokens, in)
    assert plan.slots is not None  # a mixed plan always has slots
    a_rows, b_rows = a_stack.index_select(0, plan.slots), b_stack.index_select(0, plan.slots)
    delta = torch.bmm(torch.bmm(flat, a_rows.transpose(1, 2)), b_rows.transpose(1, 2)).reshape(
        *shape[:-1], out_features
    )
    if plan.rows is None:
        return output + delta
    return output.index_add(0, plan.rows, delta)
