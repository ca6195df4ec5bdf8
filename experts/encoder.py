"""The shared base encoder, holding any number of LoRA adapters on one copy of its weights.

One ``Encoder`` is loaded per process. Experts are PEFT adapters injected into
that single model; a forward pass can run with no adapter, one adapter, or a
different adapter per row (PEFT's mixed-batch ``adapter_names``), so adding an
expert costs only its adapter's few megabytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from experts.adapters import check_adapter_fits, quiet_peft
from experts.base_model import resolve_model, weights_fingerprint
from experts.errors import ModelLoadError, UnknownExpertError

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
#: What ``embed`` takes as ``expert``: none (base), one adapter, or one per row.
ExpertChoice = str | None | Sequence[str | None]

#: PEFT's name for "no adapter on this row" in a mixed batch.
_PEFT_BASE_ROW = "__base__"


class Encoder:
    """A Hugging Face encoder with mean pooling, L2 normalisation and named LoRA adapters.

    Thread-safe: forward passes and adapter changes are serialised by one lock,
    because PEFT's active-adapter state is global to the model.

    >>> enc = Encoder()                        # bundled all-MiniLM-L6-v2
    >>> enc.embed(["heat transfer in a boundary layer"]).shape
    (1, 384)
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        max_length: int = 256,
        batch_size: int = 64,
        pooling: Pooling = "mean",
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model setting
        if pooling not in ("mean", "cls"):
            raise ValueError(f"Invalid pooling {pooling!r}. Valid pooling modes are: 'mean', 'cls'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_id, source = resolve_model(model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            self._base = AutoModel.from_pretrained(source).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load base encoder {self.model_id!r}: {exc}. Give a local directory with a "
                "transformers model, or leave it unset for the bundled all-MiniLM-L6-v2"
            ) from exc
        self.fingerprint = weights_fingerprint(self._base)
        self.dim = int(self._base.config.hidden_size)
        model_limit = int(getattr(self._base.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(max_length, model_limit)
        self.batch_size = batch_size
        self.pooling: Pooling = pooling
        self.device = device
        self._peft = None  # a PeftModel wrapping self._base once the first adapter is added
        self._lock = threading.RLock()

    @property
    def config(self):
        """The transformers config of the base model (architecture and sizes)."""
        return self._base.config

    @property
    def base_module(self) -> torch.nn.Module:
        """The underlying transformers module (with LoRA layers injected once adapters are loaded)."""
        return self._base

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters, sorted."""
        return tuple(sorted(self._peft.peft_config)) if self._peft is not None else ()

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load a PEFT LoRA adapter under ``name``; refuses one made for another base model."""
        from peft import PeftModel

        check_adapter_fits(Path(adapter_dir), self._base, base_id=self.model_id)
        with self._lock:
            if name in self.adapters:
                raise ValueError(f"adapter {name!r} is already loaded; remove it first")
            with quiet_peft():
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self._base, str(adapter_dir), adapter_name=name)
                else:
                    self._peft.load_adapter(str(adapter_dir), adapter_name=name)
            self._peft.eval()
        logger.info("loaded adapter %r from %s", name, adapter_dir)

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter; with none left the model is unwrapped back to the plain base."""
        with self._lock:
            self._require(name)
            with quiet_peft():
                if len(self.adapters) == 1:
                    self._base = self._peft.unload()
                    self._peft = None
                else:
                    self._peft.delete_adapter(name)
        logger.info("removed adapter %r", name)

    def _require(self, name: str) -> None:
        if name not in self.adapters:
            raise UnknownExpertError(f"Adapter {name!r} is not loaded. Loaded adapters: {list(self.adapters)}")

    # ------------------------------------------------------------------ embedding
    def embed(
        self,
        texts: Sequence[str],
        *,
        expert: ExpertChoice = None,
        batch_size: int | None = None,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Embed texts as L2-normalised float32 rows, shape (n, dim).

        ``expert`` is ``None`` (base model), an adapter name, or one name/None per
        row, which runs as one mixed batch. Texts are sorted by token length
        before batching so each batch pads to similar lengths; rows come back in
        the caller's order.
        """
        texts = list(texts)
        rows = self._per_row_experts(expert, len(texts))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if any(not isinstance(text, str) for text in texts):
            raise TypeError("embed() takes a sequence of str")
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        if limit < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {limit}")
        step = batch_size or self.batch_size
        encoded = self._tokenizer(texts, truncation=True, max_length=limit, padding=False)["input_ids"]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                batch = self._tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
                batch = {key: value.to(self.device) for key, value in batch.items()}
                with quiet_peft():
                    hidden = self._forward(batch, [rows[i] for i in chunk])
                out[chunk] = self._pool(hidden, batch["attention_mask"]).float().cpu().numpy()
        return out

    def _per_row_experts(self, expert: ExpertChoice, n: int) -> list[str | None]:
        if expert is None or isinstance(expert, str):
            rows = [expert] * n
        else:
            rows = list(expert)
            if len(rows) != n:
                raise ValueError(f"expert has {len(rows)} entries for {n} texts; give one per text, or one name")
        for name in {row for row in rows if row is not None}:
            self._require(name)
        return rows

    def _forward(self, batch: dict[str, torch.Tensor], rows: list[str | None]) -> torch.Tensor:
        names = set(rows)
        if names == {None}:
            if self._peft is None:
                return self._base(**batch).last_hidden_state
            with self._peft.disable_adapter():
                return self._peft(**batch).last_hidden_state
        if len(names) == 1:
            (name,) = names
            self._peft.set_adapter(name)
            return self._peft(**batch).last_hidden_state
        adapter_names = [_PEFT_BASE_ROW if row is None else row for row in rows]
        return self._peft(**batch, adapter_names=adapter_names).last_hidden_state

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)
