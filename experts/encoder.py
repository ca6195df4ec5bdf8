"""The shared base encoder, holding any number of LoRA adapters on one copy of its weights (plus, with
``bulk_copy``, a plain second copy for bulk base passes).

One ``Encoder`` is loaded per process. Experts are LoRA adapters (PEFT's
on-disk format) applied to that single model at forward time by
:class:`~experts.lora.LoraLayers`; a forward pass can run with no adapter, one
adapter, or a different adapter per row (one batched LoRA product per layer),
so adding an expert costs only its adapter's few megabytes, and a pass costs
the same whether 1 or 50 adapters are loaded.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from experts.adapters import check_adapter_fits, read_lora_weights
from experts.base_model import resolve_model, weights_fingerprint
from experts.errors import ModelLoadError, UnknownExpertError
from experts.layer_resume import LayerResume, first_layer
from experts.lora import LoraLayers
from experts.model_lock import ModelLock
from experts.quantization import Backend, apply_backend, check_backend
from experts.torch_threads import ThreadChoice

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]
#: What ``embed`` takes as ``expert``: none (base), one adapter, or one per row.
ExpertChoice = str | None | Sequence[str | None]


class Encoder:
    """A Hugging Face encoder with mean pooling, L2 normalisation and named LoRA adapters.

    Thread-safe: which adapters a pass uses is state of its own thread, so
    passes of several threads run at once on the one model, sharing the cores
    (with ``threads="auto"``, each is granted its share); adapter changes wait
    for them, and bulk callers yield to interactive ones between passes
    (:class:`~experts.model_lock.ModelLock`). ``bulk_copy=True`` keeps a second,
    plain copy of the base model for bulk base passes (document builds, large
    embeddings requests), behind a lock of its own: they then run beside the
    searches' passes instead of between them. A bulk pass of 512 tokens takes
    about 100 ms on one CPU thread, and with one shared model a search waited
    for one at each of its two passes (search p50 7.9x idle during an index
    job, docs/benchmarks.md section 20); the copy costs the model's size in memory.

    Length bucketing: rows are sorted by token count and cut into passes of
    at most ``batch_size`` rows and ``batch_tokens`` padded tokens (rows x
    longest), because a pass pads every row to its longest and small passes
    stay in cache: on 2 cores, 32 queries of <= 64 tokens ran 1.7x faster in
    passes of 8 than in one pass (docs/benchmarks.md, section 6).

    ``cache_size`` > 0 keeps the base vectors of that many recent
    (text, max_length) pairs for calls that ask for it (``embed(cache=True)``,
    the service's routing pass): a repeated query skips the base pass.

    ``threads``: torch's intra-op threads (process-wide; passes then run one
    at a time), or ``"auto"``: passes share the cores the host's other
    processes leave free (:mod:`experts.torch_threads`), several at once, each
    granted its threads by the model lock.

    ``backend="int8"`` quantises the base model's linear layers (CPU only;
    adapters stay fp32; the fingerprint stays the fp32 one): see
    :mod:`experts.quantization`.

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
        threads: int | Literal["auto"] | None = None,
        cache_size: int = 0,
        batch_tokens: int | None = 512,
        group_up_to: int = 2,
        backend: Backend = "torch",
        bulk_copy: bool = False,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        #: With ``threads="auto"``: each pass's threads, from the host's load (:mod:`experts.torch_threads`).
        self.thread_choice = ThreadChoice() if threads == "auto" else None
        if isinstance(threads, int) or threads == "auto":
            # Process-wide default (torch has no per-model setting); "auto" passes set their own, and the rest
            # of the process's torch work (training beside the service, reranking) keeps one thread.
            torch.set_num_threads(1 if threads == "auto" else threads)
        elif threads is not None:
            raise ValueError(f"threads must be a positive int, 'auto' or None, got {threads!r}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"Invalid pooling {pooling!r}. Valid pooling modes are: 'mean', 'cls'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_tokens is not None and batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1 (or None), got {batch_tokens}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.backend = check_backend(backend, device=device)
        self.model_id, source = resolve_model(model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            self._base = AutoModel.from_pretrained(source).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load base encoder {self.model_id!r}: {exc}. Give a local directory with a "
                "transformers model, or leave it unset for the bundled all-MiniLM-L6-v2"
            ) from exc
        self.fingerprint = weights_fingerprint(self._base)  # of the fp32 weights, whatever the backend
        self._base = apply_backend(self._base, self.backend)
        # Taken before any hook (adapters, resumed passes) is registered on the shared model: a plain copy.
        self._bulk_model = copy.deepcopy(self._base) if bulk_copy else None
        self._bulk_lock = threading.Lock()
        self.dim = int(self._base.config.hidden_size)
        model_limit = int(getattr(self._base.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(max_length, model_limit)
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.group_up_to = group_up_to
        self.pooling: Pooling = pooling
        self.device = device
        self._lora = LoraLayers(self._base)
        self._resume = LayerResume(self._base)
        self._first_layers: dict[str, int] = {}  # per adapter: the lowest layer it changes
        self._lock = ModelLock(capacity=self._cores)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def config(self):
        """The transformers config of the base model (architecture and sizes)."""
        return self._base.config

    @property
    def tokenizer(self):
        """The fast Hugging Face tokenizer the encoder uses (for :mod:`experts.token_windows`'s token windows)."""
        return self._tokenizer

    @property
    def base_module(self) -> torch.nn.Module:
        """The underlying transformers module (never rewrapped: adapters act through forward hooks)."""
        return self._base

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters, sorted."""
        return self._lora.names

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load a PEFT LoRA adapter under ``name``; refuses one made for another base model or a LoRA variant."""
        check_adapter_fits(Path(adapter_dir), self._base, base_id=self.model_id)
        weights = read_lora_weights(Path(adapter_dir))  # read outside the lock: passes keep running
        with self._lock.changing():
            self._lora.add(name, weights)
            self._first_layers[name] = first_layer(weights.modules)
        logger.info("loaded adapter %r from %s", name, adapter_dir)

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter; the base model is as it was before any adapter was added."""
        with self._lock.changing():
            self._require(name)
            self._lora.remove(name)
            self._first_layers.pop(name, None)
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
        cache: bool = False,
        bulk: bool = False,
    ) -> np.ndarray:
        """Embed texts as L2-normalised float32 rows, shape (n, dim).

        ``expert`` is ``None`` (base model), an adapter name, or one name/None per
        row, which runs as one mixed batch. Texts are sorted by token length
        before batching so each batch pads to similar lengths; rows come back in
        the caller's order. ``cache=True`` reads and fills the base-vector cache
        (rows without an adapter only; a no-op when ``cache_size`` is 0). ``bulk=True``
        lets interactive callers' passes go first between this call's passes
        (:mod:`experts.model_lock`): for large requests and document builds.
        """
        with self._lock.working():
            return self._embed(texts, expert, batch_size, max_length, cache, bulk)

    def working(self) -> AbstractContextManager[None]:
        """Around a caller's work between its passes (a search batch's routing and index searches).

        With ``threads="auto"``, passes that run meanwhile leave that caller a core (:mod:`experts.model_lock`).
        """
        return self._lock.working()

    def _embed(
        self,
        texts: Sequence[str],
        expert: ExpertChoice,
        batch_size: int | None,
        max_length: int | None,
        cache: bool,
        bulk: bool,
    ) -> np.ndarray:
        texts = list(texts)
        rows = self._per_row_experts(expert, len(texts))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if any(not isinstance(text, str) for text in texts):
            raise TypeError("embed() takes a sequence of str")
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        if limit < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {limit}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo = list(range(len(texts)))
        if cache and self.cache_size:
            todo = self._from_cache(texts, rows, limit, out)
            if not todo:
                return out
        step = batch_size or self.batch_size
        encoded = self._tokenizer([texts[i] for i in todo], truncation=True, max_length=limit, padding=False)[
            "input_ids"
        ]
        order = np.asarray(todo)[np.argsort([-len(ids) for ids in encoded], kind="stable")]
        ids_of = dict(zip(todo, encoded))
        for chunk in length_buckets(order, [len(ids_of[i]) for i in order], rows=step, tokens=self.batch_tokens):
            for part in self._parts(chunk, rows):
                # A bulk base pass runs on the bulk copy, beside the shared model's passes; the rest share that model.
                bulk_model = self._bulk_model if bulk and all(rows[i] is None for i in part) else None
                with self._turn(bulk_model is not None, bulk), torch.inference_mode():
                    padded = self._tokenizer.pad({"input_ids": [ids_of[i] for i in part]}, return_tensors="pt")
                    batch = {key: value.to(self.device) for key, value in padded.items()}
                    if bulk_model is not None:
                        hidden = bulk_model(**batch).last_hidden_state
                    else:
                        hidden = self._pass(batch, [rows[i] for i in part], [texts[i] for i in part], limit, bulk)
                    out[part] = self._pool(hidden, batch["attention_mask"]).float().cpu().numpy()
        if cache and self.cache_size:
            self._to_cache(texts, rows, limit, out, todo)
        return out

    @contextmanager
    def _turn(self, on_copy: bool, bulk: bool) -> Iterator[None]:
        """Around one pass: its turn (:mod:`experts.model_lock`), and with ``threads="auto"`` the threads it was granted."""
        with ExitStack() as stack:
            if on_copy:
                stack.enter_context(self._bulk_lock)
                threads = stack.enter_context(self._lock.beside())
            else:
                threads = stack.enter_context(self._lock.hold(bulk=bulk))
            if self.thread_choice is not None:
                self.thread_choice.apply(threads)
            yield

    def _cores(self) -> int:
        """The cores passes may use now: with ``threads="auto"``, as many as the host leaves free; else one pass at a time."""
        return 1 if self.thread_choice is None else self.thread_choice.threads()

    def holding_a_core(self) -> AbstractContextManager[None]:
        """Around other torch work of this process (training): with ``threads="auto"``, passes meanwhile get a thread fewer."""
        return nullcontext() if self.thread_choice is None else self.thread_choice.holding_a_core()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, special tokens included, before any truncation.

        What a caller compares with a token limit to tell a client its text
        was cut (``embed`` truncates silently). Tokenizing is microseconds per
        query next to milliseconds of model time.
        """
        encoded = self._tokenizer(list(texts), truncation=False, padding=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def _from_cache(self, texts: list[str], rows: list[str | None], limit: int, out: np.ndarray) -> list[int]:
        """Fill ``out`` with the cached base rows; return the rows still to compute."""
        todo = []
        with self._cache_lock:
            for i, (text, row) in enumerate(zip(texts, rows)):
                vector = self._cache.get((text, limit)) if row is None else None
                if vector is None:
                    todo.append(i)
                else:
                    self._cache.move_to_end((text, limit))
                    out[i] = vector
        return todo

    def _to_cache(
        self, texts: list[str], rows: list[str | None], limit: int, out: np.ndarray, computed: list[int]
    ) -> None:
        with self._cache_lock:
            for i in computed:
                if rows[i] is None:
                    self._cache[texts[i], limit] = out[i].copy()
                    self._cache.move_to_end((texts[i], limit))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

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

    def _parts(self, chunk: np.ndarray, rows: list[str | None]) -> list[np.ndarray]:
        """One mixed pass for the chunk, or one pass per adapter when it holds few (``group_up_to``).

        Measured (docs/benchmarks.md, section 6): in a length bucket of 8 rows, one
        pass per adapter is faster with 2 adapters, the batched mixed pass from 3 on.
        """
        names = dict.fromkeys(rows[i] for i in chunk)
        if len(names) == 1 or len(names) > self.group_up_to:
            return [chunk]
        return [np.asarray([i for i in chunk if rows[i] == name]) for name in names]

    def _pass(
        self, batch: dict[str, torch.Tensor], rows: list[str | None], texts: list[str], limit: int, bulk: bool
    ) -> torch.Tensor:
        """One forward pass; with top-layer adapters loaded, a base pass keeps the state their passes resume from.

        The layer kept is the lowest first layer among the loaded adapters that
        start above layer 0 (:mod:`experts.layer_resume`). An adapter pass whose
        rows' adapters all start at or above it, and whose texts a recent base
        pass saw, runs only the layers from there up. Bulk passes keep nothing.
        """
        starts = [first for first in self._first_layers.values() if first > 0]
        if starts and self._resume.supported:
            layer, mask = min(starts), batch["attention_mask"]
            if all(row is None for row in rows):
                if not bulk:
                    with self._resume.capturing(texts, limit, layer, mask):
                        return self._forward(batch, rows)
            elif all(row is not None and self._first_layers[row] >= layer for row in rows):
                states = self._resume.kept(texts, limit, layer)  # taken at once: another pass may evict them
                if states is not None:
                    with self._resume.resumed(states, layer, mask):
                        return self._forward(batch, rows)
        return self._forward(batch, rows)

    def _forward(self, batch: dict[str, torch.Tensor], rows: list[str | None]) -> torch.Tensor:
        with self._lora.applied(rows):
            return self._base(**batch).last_hidden_state

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)


def length_buckets(order: np.ndarray, lengths: list[int], *, rows: int, tokens: int | None) -> list[np.ndarray]:
    """Cut rows sorted by descending length into passes of <= ``rows`` rows and <= ``tokens`` padded tokens.

    A pass pads to its first (longest) row, so its cost is about rows x that
    length; every pass holds at least one row.
    """
    chunks, start = [], 0
    for end in range(1, len(order) + 1):
        size = end - start
        if end == len(order) or size == rows or (tokens is not None and (size + 1) * lengths[start] > tokens):
            chunks.append(order[start:end])
            start = end
    return chunks
