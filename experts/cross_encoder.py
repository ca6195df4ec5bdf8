"""A cross-encoder: scores (query, document) pairs by reading both texts together, for reranking.

The bi-encoder (:class:`~experts.encoder.Encoder`) embeds a query and a document
apart and compares the vectors, which is what makes searching millions of
documents cheap; a cross-encoder runs one transformer pass over the query and
the document side by side, so every query token attends to every document
token. It is far better at telling which of a few hundred candidates answer the
query, and far too slow to search a collection: it reranks what search found.

Any Hugging Face sequence-classification checkpoint with one label (a
relevance logit: ``cross-encoder/ms-marco-MiniLM-L-6-v2``, BAAI's and Jina's
rerankers) or two (irrelevant / relevant) loads here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experts.base_model import resolve_model
from experts.encoder import length_buckets
from experts.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: One reranking: a query and the documents to score against it.
RerankGroup = tuple[str, Sequence[str]]


@dataclass(frozen=True)
class PairScores:
    """The scores of one query's documents, in the caller's order, and the tokens the model read for them.

    ``scores``: (n,) float32 relevance in [0, 1]; ``tokens``: the pairs' tokens
    as scored (after truncation, special tokens included), what a client is billed.
    """

    scores: np.ndarray
    tokens: int


class CrossEncoder:
    """A Hugging Face sequence-classification model that scores (query, document) pairs.

    Relevance is the sigmoid of the logit for one-label models and the
    probability of the last label (``relevant``) for two-label models, so
    every score is in [0, 1] whatever the checkpoint; other label counts are
    refused at load, because their scores would mean nothing here.

    Pairs are cut to ``max_length`` tokens (the longer text first, as
    sentence-transformers does), sorted by length and run in passes of at most
    ``batch_size`` pairs and ``batch_tokens`` padded tokens (pairs x longest):
    a pass pads every pair to its longest, documents vary from a title to a
    page, and on CPU small passes win. Measured on 2 cores, one thread, MiniLM-L6
    size: 100 scifact abstracts (~350 tokens a pair) took 8.6 s in passes of 32
    and 6.4 s in passes of 8 (or of 1); 100 titles (~35 tokens) 0.74 s in passes of
    32, 0.64 s of 8, 1.09 s of 1. ``batch_tokens`` None: ``batch_size`` alone (GPUs).
    Thread-safe: one lock around the passes, as :class:`~experts.encoder.Encoder` has.

    >>> ce = CrossEncoder("cross-encoder/ms-marco-MiniLM-L-6-v2")
    >>> ce.score("lift of a swept wing", ["Swept wings at transonic speed.", "A compiler for ALGOL."])
    array([0.97, 0.0001], dtype=float32)
    """

    def __init__(
        self,
        model: str | Path,
        *,
        max_length: int = 512,
        batch_size: int = 32,
        batch_tokens: int | None = None,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8 (room for two texts and three special tokens), got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_tokens is not None and batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1 (or None), got {batch_tokens}")
        self.model_id, source = resolve_model(model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            loaded, info = AutoModelForSequenceClassification.from_pretrained(source, output_loading_info=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(
                f"cannot load cross-encoder {self.model_id!r}: {exc}. Give a Hugging Face model id or a local "
                "directory holding a sequence-classification model (a reranker) and its tokenizer"
            ) from exc
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            # transformers fills missing weights with random ones (an encoder checkpoint has no classification
            # head): every score would be noise, so refuse rather than serve it.
            raise ModelLoadError(
                f"{self.model_id!r} is not a cross-encoder: the checkpoint lacks {missing[:4]} (random weights "
                "would take their place). Give a reranker such as cross-encoder/ms-marco-MiniLM-L-6-v2"
            )
        self.num_labels = int(loaded.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ModelLoadError(
                f"{self.model_id!r} has {self.num_labels} labels; a cross-encoder must have 1 (a relevance logit) "
                "or 2 (irrelevant, relevant)"
            )
        self._model = loaded.to(device).eval()
        limits = [max_length, int(getattr(loaded.config, "max_position_embeddings", max_length) or max_length)]
        if 0 < self._tokenizer.model_max_length < 1_000_000:  # a tokenizer without a limit says 1e30
            limits.append(int(self._tokenizer.model_max_length))
        self.max_length = min(limits)
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.device = device
        self._lock = threading.Lock()
        logger.info(
            "loaded cross-encoder %r (%d labels, %d tokens per pair)", self.model_id, self.num_labels, self.max_length
        )

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Relevance of each document to ``query``: (n,) float32 in [0, 1], in the order given."""
        (scored,) = self.score_many([(query, documents)])
        return scored.scores

    def score_many(self, groups: Sequence[RerankGroup]) -> list[PairScores]:
        """Score several queries' documents in shared passes: one :class:`PairScores` per group, in order.

        What the service's micro-batcher calls with the rerankings of every
        request it gathered: pairs from different requests pad together, so
        ten requests of ten documents cost about one request of a hundred.
        """
        queries: list[str] = []
        documents: list[str] = []
        for query, docs in groups:
            if not isinstance(query, str) or isinstance(docs, str) or not all(isinstance(d, str) for d in docs):
                raise TypeError("score_many() takes (query, documents) pairs: a str and a sequence of str")
            queries.extend([query] * len(docs))
            documents.extend(docs)
        scores = np.empty(len(documents), dtype=np.float32)
        lengths: list[int] = []
        if documents:
            encoded = self._tokenizer(queries, documents, truncation=True, max_length=self.max_length, padding=False)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            order = np.argsort([-n for n in lengths], kind="stable")
            keys = [key for key in ("input_ids", "token_type_ids") if key in encoded]
            passes = length_buckets(order, [lengths[i] for i in order], rows=self.batch_size, tokens=self.batch_tokens)
            with self._lock, torch.inference_mode():
                for rows in passes:
                    features = {key: [encoded[key][i] for i in rows] for key in keys}
                    padded = self._tokenizer.pad(features, return_tensors="pt")
                    batch = {key: value.to(self.device) for key, value in padded.items()}
                    scores[rows] = self._relevance(self._model(**batch).logits)
        out, start = [], 0
        for _, docs in groups:
            end = start + len(docs)
            out.append(PairScores(scores[start:end].copy(), int(sum(lengths[start:end]))))
            start = end
        return out

    def _relevance(self, logits: torch.Tensor) -> np.ndarray:
        """(b, num_labels) logits as (b,) relevance in [0, 1]."""
        if self.num_labels == 1:
            relevance = torch.sigmoid(logits[:, 0])
        else:
            relevance = torch.softmax(logits.float(), dim=-1)[:, -1]
        return relevance.float().cpu().numpy()
