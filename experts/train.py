"""Training a query-side LoRA expert: contrastive InfoNCE against frozen document embeddings.

Documents are embedded once, by the frozen base encoder (the vectors the
expert's FAISS index holds); only short queries go through the trainable
LoRA copy. That is what makes CPU training fast, and it lets each query be
scored against **every** document (a softmax over the whole collection)
rather than only the few in its batch. For collections above
``full_softmax_limit`` documents, each batch is scored against the union of
its positives (in-batch negatives) and, when asked, hard negatives mined with
the base encoder.

The model trained here is a fresh copy of the base loaded from disk, never
the serving :class:`~experts.Encoder` (which may hold other adapters).

>>> report = train_adapter(encoder, pairs, doc_vectors, Path("adapter"))  # doctest: +SKIP
>>> report.final_loss < report.first_loss
True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from experts.adapters import DEFAULT_TARGET_MODULES, quiet_peft, read_adapter_config
from experts.base_model import resolve_model, weights_fingerprint
from experts.encoder import Encoder, Pooling
from experts.errors import ExpertError, ModelLoadError
from experts.pairs import TrainingPair
from experts.train_checkpoint import CHECKPOINT_EVERY, inputs_fingerprint, load_checkpoint, save_checkpoint
from experts.train_prefix import FrozenPrefix, frozen_prefix

logger = logging.getLogger(__name__)

#: ``search(query_vectors (n, dim) float32, k) -> (n, k) int64 document rows, -1 for none``.
NegativeSearch = Callable[[np.ndarray, int], np.ndarray]
#: ``search(query_texts, k) -> ((n, k) float scores, (n, k) int64 document rows, -1 for none)``: BM25 over the rows.
LexicalSearch = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]
TrainMode = Literal["full_softmax", "in_batch"]


class TrainingError(ExpertError, ValueError):
    """Training inputs that cannot work together (no pairs, rows out of range, bad sizes)."""


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Defaults are DESIGN.md's measured recipe, except the learning rate.

    lr 1e-3 instead of 3e-4: in the same runs (300 steps, corpus-only) it
    scored higher nDCG@10 on all three collections tried (cranfield 0.399 vs
    0.394, cisi 0.458 vs 0.454, cacm 0.479 vs 0.472); 2e-3 was mixed.

    >>> TrainConfig(steps=500, temperature=0.05).rank
    8
    """

    #: Optimiser steps (one batch each). 300 x 64 queries takes 2.5-5 minutes on 2 CPU cores
    #: (top 2 layers; 3.5-10 at full depth, measured 2026-12-05 on a shared machine).
    steps: int = 300
    #: Queries per step.
    batch_size: int = 64
    #: AdamW peak learning rate (LoRA tolerates much more than full fine-tuning; see above).
    lr: float = 1e-3
    #: Share of the steps spent warming the learning rate up linearly; it then decays linearly to 0.
    warmup: float = 0.1
    #: AdamW weight decay on the LoRA matrices.
    weight_decay: float = 0.01
    #: Softmax temperature of the InfoNCE loss (scores are cosines in [-1, 1]).
    temperature: float = 0.05
    #: LoRA rank, scaling (alpha / rank multiplies the update) and dropout.
    rank: int = 8
    alpha: float = 32
    dropout: float = 0.1
    #: Module names that get LoRA: BERT's attention projections and dense layers by default.
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    #: How many of the encoder's top layers get LoRA; None: every layer. An adapter on the top layers
    #: only lets a routed query's expert pass start from the base pass's hidden state below them
    #: (:mod:`experts.layer_resume`): with 2 of MiniLM's 6 layers it costs 0.4-0.6 of a base pass instead
    #: of 1.1-1.2, for 0.2 points of routed-hybrid nDCG@10 (docs/eval-2026-12-05), and trains faster.
    top_layers: int | None = 2
    #: With ``top_layers``: run the frozen layers below the adapter once per distinct query, in eval mode as the
    #: service runs them, and each step only the adapted layers (:mod:`experts.train_prefix`). False: every step
    #: runs the whole model in train mode (dropout in the frozen layers too), the measured recipe. 1.16x faster
    #: per step; off until experts trained with it are evaluated (docs/benchmarks.md, section 19).
    frozen_prefix: bool = False
    #: Token limit of training queries; pseudo queries are 4-12 words, real ones rarely longer.
    query_max_length: int = 48
    #: Seeds torch (LoRA init, dropout) and the batch order; same seed, same adapter on CPU.
    seed: int = 0
    #: Hard negatives per query, mined with the base encoder, in in-batch mode (None: in-batch only).
    hard_negatives: int | None = None
    #: Up to this many documents every query is scored against every document (full softmax);
    #: above it, against the batch's positives and mined hard negatives.
    full_softmax_limit: int = 50_000
    #: Gradient norm clip (None: no clipping).
    max_grad_norm: float | None = 1.0
    #: Train on the score hybrid search ranks by: the dense share of its weighted fusion with BM25
    #: (the expert's fusion weight; see ``fused_scores``). None: on the dense score alone.
    fusion_weight: float | None = None
    #: Candidates each side of that fusion (the service's ``RR_HYBRID_CANDIDATES``).
    fusion_candidates: int = 200

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.top_layers is not None and (
            not isinstance(self.top_layers, int) or isinstance(self.top_layers, bool) or self.top_layers < 1
        ):
            raise ValueError(f"top_layers must be a positive integer or None (every layer), got {self.top_layers!r}")
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "query_max_length": self.query_max_length,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0 or not self.temperature > 0 or not self.alpha > 0:
            raise ValueError(
                f"lr, temperature and alpha must be > 0, got lr={self.lr}, temperature={self.temperature}, alpha={self.alpha}"
            )
        if not 0 <= self.warmup < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"warmup and dropout must be in [0, 1), got warmup={self.warmup}, dropout={self.dropout}")
        if self.hard_negatives is not None and self.hard_negatives < 1:
            raise ValueError(f"hard_negatives must be a positive integer or None, got {self.hard_negatives!r}")
        if self.fusion_weight is not None and not 0 < self.fusion_weight <= 1:
            raise ValueError(f"fusion_weight must be in (0, 1] or None, got {self.fusion_weight!r}")
        if self.fusion_candidates < 1:
            raise ValueError(f"fusion_candidates must be >= 1, got {self.fusion_candidates}")
        if self.full_softmax_limit < 0:
            raise ValueError(f"full_softmax_limit must be >= 0, got {self.full_softmax_limit}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module, e.g. ('query', 'key', 'value', 'dense')")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for the manifest's record of how an expert was trained)."""
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


@dataclass(frozen=True)
class TrainReport:
    """What a training run did: sizes, mode, losses (mean of the first and last tenth of the steps), time."""

    adapter_dir: Path
    config: TrainConfig
    mode: TrainMode
    pairs: int
    documents: int
    first_loss: float
    final_loss: float
    seconds: float
    losses: tuple[float, ...] = field(repr=False, default=())


# ---------------------------------------------------------------------- the model copy
def _training_copy(base: Encoder | str | Path, pooling: Pooling | None):
    """A fresh, trainable copy of the base model, its tokenizer, pooling and id.

    From an :class:`Encoder` the weights are re-read from where it loaded them
    and checked against its fingerprint, so the adapter is trained on exactly
    the weights it will serve on (and no adapter already injected into the
    serving model can leak in).
    """
    from transformers import AutoModel, AutoTokenizer

    model_id, source = resolve_model(base.model_id if isinstance(base, Encoder) else base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load base model {model_id!r} for training: {exc}") from exc
    if isinstance(base, Encoder):
        if weights_fingerprint(model) != base.fingerprint:
            raise ModelLoadError(
                f"the base model at {source} no longer matches the loaded encoder {base.model_id!r} "
                "(its weights changed on disk); restart with the model you mean to train on"
            )
        pooling = pooling or base.pooling
    return model, tokenizer, pooling or "mean", model_id


def _top(model, top_layers: int | None) -> list[int] | None:
    """The layer numbers of the model's top ``top_layers`` layers; None (every layer) where it has no more."""
    if top_layers is None:
        return None
    count = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if top_layers >= count:  # (or a model that does not say: PEFT then finds the layers itself)
        return None
    return list(range(count - top_layers, count))


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """The encoder's pooling (see :meth:`Encoder._pool`), kept differentiable."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


#: Rows per forward pass inside a training batch (see ``_embed``).
_FORWARD_ROWS = 16


def _embed(
    model, tokenizer, texts: list[str], *, max_length: int, pooling: Pooling, prefix: FrozenPrefix | None = None
) -> torch.Tensor:
    """(n, dim) pooled, normalised query vectors, in the order given, differentiable.

    Rows are sorted by token length and run in groups of ``_FORWARD_ROWS``,
    each padded only to its own longest row: pseudo queries are 5-20 tokens but
    one long title pads a whole batch to 48, and the linear layers pay for
    every padded position. Measured on MiniLM with 64 cranfield pseudo queries
    (mean 14 tokens, max 47): 2.5-3x faster per step, same vectors. With
    ``prefix`` (its states computed for these texts) only the layers above it run.
    """
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pooled = []
    for start in range(0, len(order), _FORWARD_ROWS):
        group = [ids[i] for i in order[start : start + _FORWARD_ROWS]]
        batch = tokenizer.pad({"input_ids": group}, return_tensors="pt")
        if prefix is None:
            hidden = model(**batch).last_hidden_state
        else:
            with prefix.resumed(group, batch["attention_mask"]):
                hidden = model(**batch).last_hidden_state
        pooled.append(_pool(hidden, batch["attention_mask"], pooling))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return torch.cat(pooled)[inverse]


# ---------------------------------------------------------------------- batches and negatives
def batch_schedule(n_pairs: int, *, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The pair indices of every step: shuffled epochs, so each pair is used before any repeats.

    Fixed up front so that hard negatives are mined only for the queries that
    will actually be seen (``steps * batch_size`` of them, not every pair).
    """
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    order = np.concatenate([rng.permutation(n_pairs) for _ in range(math.ceil(needed / n_pairs))])[:needed]
    return [order[start : start + batch_size] for start in range(0, needed, batch_size)]


def exact_search(documents: np.ndarray) -> NegativeSearch:
    """Exact inner-product top-k over the document matrix, in query chunks (the default miner)."""
    matrix = torch.from_numpy(np.ascontiguousarray(documents, dtype=np.float32))

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        k = min(k, len(matrix))
        out = []
        for start in range(0, len(queries), 256):
            scores = torch.from_numpy(queries[start : start + 256]) @ matrix.T
            out.append(torch.topk(scores, k, dim=1).indices.numpy())
        return np.concatenate(out).astype(np.int64) if out else np.zeros((0, k), dtype=np.int64)

    return search


def _mine(
    model,
    tokenizer,
    pairs: Sequence[TrainingPair],
    used: np.ndarray,
    *,
    k: int,
    search: NegativeSearch,
    max_length: int,
    pooling: Pooling,
) -> dict[int, np.ndarray]:
    """Per used pair index: up to ``k`` rows the base encoder ranks highest that are not its positives."""
    model.eval()
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(used), 128):
            texts = [pairs[i].query for i in used[start : start + 128]]
            vectors.append(_embed(model, tokenizer, texts, max_length=max_length, pooling=pooling).numpy())
    longest = max(len(pairs[i].positives) for i in used)
    found = search(np.concatenate(vectors).astype(np.float32), k + longest)
    negatives = {}
    for index, rows in zip(used.tolist(), found, strict=True):
        positives = set(pairs[index].positives)
        negatives[index] = np.asarray([r for r in rows.tolist() if r >= 0 and r not in positives][:k], dtype=np.int64)
    return negatives


def _lexical_lists(
    pairs: Sequence[TrainingPair], used: np.ndarray, search: LexicalSearch, *, k: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per used pair index: its query's BM25 top-``k`` rows and their scores min-max normalised (as hybrid search does)."""
    lists = {}
    for start in range(0, len(used), 1024):
        chunk = used[start : start + 1024]
        scores, rows = search([pairs[i].query for i in chunk], k)
        for index, line_scores, line_rows in zip(chunk.tolist(), scores, rows, strict=True):
            keep = (line_rows >= 0) & np.isfinite(line_scores)
            values, found = line_scores[keep].astype(np.float32), line_rows[keep].astype(np.int64)
            if len(values):
                low, high = float(values.min()), float(values.max())
                values = (values - low) / (high - low) if high - low > 1e-12 else np.ones_like(values)
            lists[index] = (found, values)
    return lists


def _lexical_matrix(
    batch: np.ndarray, lists: dict[int, tuple[np.ndarray, np.ndarray]], columns: torch.Tensor | None, n_docs: int
) -> torch.Tensor:
    """(b, c) normalised BM25 score of each scored document for each batch query, 0 outside its top list."""
    where = None if columns is None else {int(row): column for column, row in enumerate(columns.tolist())}
    out = torch.zeros((len(batch), n_docs if columns is None else len(columns)))
    for line, i in enumerate(batch):
        rows, values = lists[int(i)]
        if where is not None:
            kept = [(where[row], value) for row, value in zip(rows.tolist(), values.tolist()) if row in where]
            rows = np.asarray([column for column, _ in kept], dtype=np.int64)
            values = np.asarray([value for _, value in kept], dtype=np.float32)
        out[line, torch.from_numpy(rows)] = torch.from_numpy(values)
    return out


def fused_scores(dense: torch.Tensor, lexical: torch.Tensor, *, weight: float, candidates: int) -> torch.Tensor:
    """The order hybrid search ranks documents in, in cosine units: ``dense + span * (1 - weight) / weight * lexical``.

    Hybrid search ranks a query's candidates by ``weight * minmax(dense) +
    (1 - weight) * minmax(bm25)``, each side min-max normalised over its top
    ``candidates``. Multiplying by the dense side's span (its best score less
    its ``candidates``-th, held constant: no gradient flows through it) and
    dividing by ``weight`` gives the same order in cosine units, so the
    InfoNCE temperature keeps its meaning. ``lexical`` is 0 outside a query's
    BM25 list. Trained on this, the adapter is pushed where the fused ranking
    misses the positive (mostly where BM25 misses it) and left alone where
    BM25 already puts it on top.

    >>> fused_scores(torch.tensor([[0.9, 0.5]]), torch.tensor([[0.0, 1.0]]), weight=0.5, candidates=2)
    tensor([[0.9000, 0.9000]])
    """
    top = torch.topk(dense.detach(), min(candidates, dense.shape[1]), dim=1).values
    span = (top[:, 0] - top[:, -1]).clamp(min=1e-6)
    return dense + (span * (1.0 - weight) / weight).unsqueeze(1) * lexical


def _candidates(
    batch: np.ndarray, pairs: Sequence[TrainingPair], negatives: dict[int, np.ndarray] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch mode: the document rows to score (batch positives + mined negatives) and the positive mask."""
    rows = {row for i in batch for row in pairs[i].positives}
    if negatives is not None:
        rows |= {int(row) for i in batch for row in negatives[int(i)]}
    columns = sorted(rows)
    where = {row: column for column, row in enumerate(columns)}
    mask = torch.zeros((len(batch), len(columns)), dtype=torch.bool)
    for line, i in enumerate(batch):
        mask[line, [where[row] for row in pairs[i].positives]] = True
    return torch.tensor(columns, dtype=torch.long), mask


def _full_mask(batch: np.ndarray, pairs: Sequence[TrainingPair], n_docs: int) -> torch.Tensor:
    mask = torch.zeros((len(batch), n_docs), dtype=torch.bool)
    for line, i in enumerate(batch):
        mask[line, list(pairs[i].positives)] = True
    return mask


def info_nce(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(sum of softmax mass on the positives)``: (b, c) scores, (b, c) bool mask.

    With one positive per row this is the usual InfoNCE; with several (qrels
    that judge several documents relevant) any of them may win.
    """
    return (torch.logsumexp(scores, dim=1) - torch.logsumexp(scores.masked_fill(~positives, -torch.inf), dim=1)).mean()


# ---------------------------------------------------------------------- training
def _check_inputs(pairs: Sequence[TrainingPair], documents: np.ndarray, out_dir: Path) -> np.ndarray:
    if not pairs:
        raise TrainingError("no training pairs: give a corpus with text (or labelled queries)")
    documents = np.asarray(documents)
    if documents.ndim != 2 or len(documents) == 0:
        raise TrainingError(f"documents must be a non-empty (n_docs, dim) matrix, got shape {documents.shape}")
    if not np.isfinite(documents).all():
        raise TrainingError("document vectors contain NaN or infinite values")
    top = max(row for pair in pairs for row in pair.positives)
    if top >= len(documents):
        raise TrainingError(f"a training pair names document row {top}, but the matrix has {len(documents)} rows")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TrainingError(f"adapter output directory {out_dir} exists and is not empty")
    return np.ascontiguousarray(documents, dtype=np.float32)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, round(config.warmup * config.steps)) if config.warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (config.steps - step) / max(1, config.steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resume(
    state: dict[str, Any] | None, weights: dict[str, Any], optimizer: Any, scheduler: Any, losses: list[float]
) -> int:
    """Put a checkpoint's state into the run (weights, optimiser, schedule, losses, RNG); the steps already done."""
    if state is None:
        return 0
    if set(state["weights"]) != set(weights):
        logger.warning("ignoring a training checkpoint whose adapter weights differ from this run's")
        return 0
    with torch.no_grad():
        for name, tensor in state["weights"].items():
            weights[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    losses.extend(state["losses"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def train_adapter(
    base: Encoder | str | Path,
    pairs: Sequence[TrainingPair],
    documents: np.ndarray,
    out_dir: Path,
    *,
    config: TrainConfig = TrainConfig(),
    pooling: Pooling | None = None,
    negative_search: NegativeSearch | None = None,
    lexical_search: LexicalSearch | None = None,
    progress: bool = True,
    description: str = "training",
    on_step: Callable[[int, int], None] | None = None,
    checkpoint: Path | None = None,
) -> TrainReport:
    """Train a query-side LoRA adapter and save it in PEFT format to ``out_dir``.

    ``documents`` is the (n_docs, dim) float32 matrix of frozen, L2-normalised
    base-encoder document vectors; each pair's positives are rows of it.
    ``base`` is the serving :class:`Encoder` (its weights are re-read and
    checked by fingerprint) or a model id/path. ``negative_search`` mines hard
    negatives in in-batch mode (default: exact search over ``documents``; the
    app passes the expert's FAISS index for large collections).
    ``lexical_search`` is BM25 over the same rows, needed when
    ``config.fusion_weight`` is set (the adapter is trained on the fused score).
    ``on_step(done, total)`` is called after each optimiser step; an exception it raises stops the
    training there (a job cancelled between steps), and nothing is written to ``out_dir``.

    ``checkpoint``: a file the run writes every ``CHECKPOINT_EVERY`` steps and, when it holds a checkpoint
    of the same inputs, resumes from (:mod:`experts.train_checkpoint`); the caller removes it once done.

    Deterministic on CPU for a given ``config.seed`` (and thread count), resumed or not; the
    global torch RNG is restored afterwards.
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    matrix = _check_inputs(pairs, documents, out_dir)
    started = time.perf_counter()
    model, tokenizer, pooling, model_id = _training_copy(base, pooling)
    if int(model.config.hidden_size) != matrix.shape[1]:
        raise TrainingError(
            f"document vectors have dim {matrix.shape[1]} but the base model {model_id!r} has dim {model.config.hidden_size}"
        )
    limit = int(getattr(model.config, "max_position_embeddings", config.query_max_length) or config.query_max_length)
    max_length = min(config.query_max_length, limit)
    mode: TrainMode = "full_softmax" if len(matrix) <= config.full_softmax_limit else "in_batch"
    schedule = batch_schedule(len(pairs), steps=config.steps, batch_size=config.batch_size, seed=config.seed)
    losses: list[float] = []
    if config.fusion_weight is not None and config.fusion_weight < 1 and lexical_search is None:
        raise TrainingError("fusion_weight is set but no lexical_search was given to score the BM25 side with")
    used = np.unique(np.concatenate(schedule))  # the pairs the schedule will see
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        negatives = None
        if mode == "in_batch" and config.hard_negatives:
            logger.info(
                "mining %d hard negatives for %d queries with the base encoder", config.hard_negatives, len(used)
            )
            negatives = _mine(
                model,
                tokenizer,
                pairs,
                used,
                k=config.hard_negatives,
                search=negative_search or exact_search(matrix),
                max_length=max_length,
                pooling=pooling,
            )
        lexical = None
        if config.fusion_weight is not None and config.fusion_weight < 1:
            assert lexical_search is not None  # checked above
            lexical = _lexical_lists(pairs, used, lexical_search, k=config.fusion_candidates)
        layers = _top(model, config.top_layers)
        prefix = frozen_prefix(model, layers[0]) if layers and config.frozen_prefix else None
        if prefix is not None:
            texts = [pairs[i].query for i in used]
            prefix.compute(tokenizer, tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
            logger.info("frozen layers 0-%d run once for %d distinct training queries", prefix.first - 1, len(prefix))
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT annotates it int; a float scales alike
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            layers_to_transform=layers,
        )
        with quiet_peft():
            peft_model = get_peft_model(model, lora)
        peft_model.peft_config["default"].base_model_name_or_path = model_id
        peft_model.train()
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = _scheduler(optimizer, config)
        weights = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
        fingerprint = inputs_fingerprint(config, pairs, matrix.shape) if checkpoint is not None else ""
        start = _resume(load_checkpoint(checkpoint, fingerprint), weights, optimizer, scheduler, losses)
        if start:
            logger.info("resuming training from its checkpoint after step %d of %d", start, len(schedule))
        doc_tensor = torch.from_numpy(matrix)
        smoothed = None
        # Beside a serving encoder choosing its threads per pass, the steps hold a core (experts.torch_threads).
        holding = base.holding_a_core() if isinstance(base, Encoder) else nullcontext()
        with (
            holding,
            tqdm(
                total=config.steps,
                initial=start,
                desc=description,
                unit="step",
                disable=not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            for batch in schedule[start:]:
                queries = _embed(
                    peft_model,
                    tokenizer,
                    [pairs[i].query for i in batch],
                    max_length=max_length,
                    pooling=pooling,
                    prefix=prefix,
                )
                columns = None
                if mode == "full_softmax":
                    scores, mask = queries @ doc_tensor.T, _full_mask(batch, pairs, len(matrix))
                else:
                    columns, mask = _candidates(batch, pairs, negatives)
                    scores = queries @ doc_tensor[columns].T
                if lexical is not None:
                    assert config.fusion_weight is not None  # lexical lists are made only then
                    bonus = _lexical_matrix(batch, lexical, columns, len(matrix))
                    scores = fused_scores(
                        scores, bonus, weight=config.fusion_weight, candidates=config.fusion_candidates
                    )
                loss = info_nce(scores / config.temperature, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                smoothed = losses[-1] if smoothed is None else 0.9 * smoothed + 0.1 * losses[-1]
                bar.set_postfix(loss=f"{smoothed:.3f}", refresh=False)
                bar.update(1)
                if checkpoint is not None and len(losses) % CHECKPOINT_EVERY == 0 and len(losses) < len(schedule):
                    save_checkpoint(
                        checkpoint,
                        fingerprint=fingerprint,
                        step=len(losses),
                        weights=weights,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        losses=losses,
                    )
                if on_step is not None:
                    on_step(len(losses), len(schedule))
        peft_model.eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        # save_embedding_layers=False: PEFT would otherwise look the base id up on the hub.
        peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
    read_adapter_config(out_dir)  # what was written is a loadable LoRA adapter
    tenth = max(1, len(losses) // 10)
    report = TrainReport(
        adapter_dir=out_dir,
        config=config,
        mode=mode,
        pairs=len(pairs),
        documents=len(matrix),
        first_loss=float(np.mean(losses[:tenth])),
        final_loss=float(np.mean(losses[-tenth:])),
        seconds=time.perf_counter() - started,
        losses=tuple(losses),
    )
    logger.info(
        "trained adapter in %.0fs (%s, %d pairs, %d documents): loss %.3f -> %.3f",
        report.seconds,
        mode,
        report.pairs,
        report.documents,
        report.first_loss,
        report.final_loss,
    )
    return report
