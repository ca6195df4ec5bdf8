"""One run of the batch job: the corpora streamed chunk by chunk, each chunk embedded and committed.

A chunk's documents, its vector shard and the checkpoint's marker are
committed together (see :mod:`index.build.checkpoint`), so a run killed at any
point resumes after the last committed chunk; when every corpus is in, the
generation is assembled in ``work_dir/staging`` (:mod:`index.build.assembly`).
Apart from :func:`~index.build.indexing.build_index` (arguments, the work
directory, resuming or recognising a finished build, publishing, the report)
because this is the per-chunk work and that is the driver around it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.build.assembly import assemble_dense, stage_collection, stage_lexical
from index.build.checkpoint import STAGING_DIR, Checkpoint, Progress
from index.build.embedding import EmbedFn, checked_embed
from index.build.shards import remove_shards_from, write_shard
from index.corpus import CorpusProblem, Document, count_lines, read_corpus
from index.errors import CorpusError
from index.long_documents import ChunkSettings, SplitFn, plan_chunks, too_long_message
from index.store.analysis import LexicalSettings

__all__ = ["MAX_REPORTED_PROBLEMS", "BuildJob"]

logger = logging.getLogger(__name__)

MAX_REPORTED_PROBLEMS = 100
_MAX_LOGGED_PROBLEMS = 20
_MAX_PENDING_PROBLEMS = 4096  # commit early when a long run of malformed lines piles up


class BuildJob:
    """One run of :func:`~index.build.indexing.build_index`; holds the checkpoint and counters between chunks."""

    def __init__(
        self,
        corpora: list[Path],
        checkpoint: Checkpoint,
        *,
        embed: EmbedFn,
        dim: int,
        upsert: bool,
        chunking: ChunkSettings | None = None,
        split: SplitFn | None = None,
    ) -> None:
        self.corpora = corpora
        self.checkpoint = checkpoint
        self.embed = embed
        self.dim = dim
        self.upsert = upsert
        self.chunking = chunking
        self.split = split
        self.progress = checkpoint.progress()

    def _where(self, corpus: int, line: int) -> str:
        return f"{self.corpora[corpus]}:{line}"

    def _check_duplicates(self, corpus: int, docs: list[tuple[int, Document]]) -> int:
        """Return how many documents replace an earlier one; raise unless upserting."""
        existing = self.checkpoint.store.row_ids([doc.id for _, doc in docs])
        seen: dict[str, int] = {}
        replaced = 0
        for (line, doc), row_id in zip(docs, existing, strict=True):
            if row_id is not None or doc.id in seen:
                if not self.upsert:
                    source = self.checkpoint.source(row_id) if row_id is not None else (corpus, seen[doc.id])
                    first = self._where(*source) if source else "an earlier chunk"
                    raise CorpusError(
                        f"duplicate document id {doc.id!r} at {self._where(corpus, line)}, first seen at {first}; "
                        "pass upsert=True to let the later document replace the earlier one"
                    )
                replaced += 1
            seen[doc.id] = line
        return replaced

    def commit_chunk(
        self,
        corpus: int,
        docs: list[tuple[int, Document]],
        problems: list[CorpusProblem],
        *,
        next_marker: tuple[int, int],
    ) -> None:
        """Embed and commit one chunk; afterwards the marker points at ``next_marker``."""
        spans, refused = plan_chunks([doc for _, doc in docs], self.chunking, self.split)
        if refused:
            assert self.chunking is not None  # only a long-document policy refuses documents
            gone = {position for position, _ in refused}
            problems = sorted(
                [*problems]
                + [
                    CorpusProblem(
                        docs[i][0], too_long_message(docs[i][1].id, tokens, self.chunking), self.corpora[corpus]
                    )
                    for i, tokens in refused
                ],
                key=lambda p: p.line,
            )
            docs = [d for i, d in enumerate(docs) if i not in gone]
            spans = [s for i, s in enumerate(spans) if i not in gone]
        replaced = self._check_duplicates(corpus, docs) if docs else 0
        owners = np.repeat(np.arange(len(docs)), [len(s) for s in spans]).astype(np.int64)
        windows = np.asarray([w for s in spans for w in s], dtype=np.int64).reshape(-1, 2)
        passages = [doc.passage() for _, doc in docs]
        texts = [passages[o][a:b] for o, (a, b) in zip(owners.tolist(), windows.tolist(), strict=True)]
        vectors = checked_embed(self.embed, texts, self.dim) if docs else None
        for problem in problems:
            level = logging.WARNING if self.progress.malformed < _MAX_LOGGED_PROBLEMS else logging.DEBUG
            logger.log(level, "skipping corpus line %s", problem)
        store = self.checkpoint.store
        shard = self.progress.next_shard
        with store.transaction() as conn:
            row_ids = store.add([doc for _, doc in docs], upsert=self.upsert)
            if vectors is not None:
                # The shard is durable before the commit: a committed marker always has its shard.
                splits = self.chunking is not None and self.chunking.splits
                write_shard(self.checkpoint.shards_dir, shard, row_ids[owners], vectors, windows if splits else None)
            progress = Progress(
                corpus=next_marker[0],
                line=next_marker[1],
                next_shard=shard + (vectors is not None),
                malformed=self.progress.malformed + len(problems),
                replaced=self.progress.replaced + replaced,
            )
            Checkpoint.record(
                conn,
                progress=progress,
                sources=[(int(r), corpus, line) for r, (line, _) in zip(row_ids, docs, strict=True)],
                problems=[(corpus, p.line, p.reason) for p in problems],
            )
        self.progress = progress

    def stream(self, *, chunk_size: int, bar: tqdm, line_counts: list[int]) -> None:
        """Read every corpus from the marker on, committing chunk by chunk."""
        while self.progress.corpus < len(self.corpora):
            corpus, done = self.progress.corpus, self.progress.line
            docs: list[tuple[int, Document]] = []
            problems: list[CorpusProblem] = []
            for line, item in read_corpus(self.corpora[corpus], start_line=done):
                if isinstance(item, CorpusProblem):
                    problems.append(item)
                else:
                    docs.append((line, item))
                if len(docs) >= chunk_size or len(problems) >= _MAX_PENDING_PROBLEMS:
                    self.commit_chunk(corpus, docs, problems, next_marker=(corpus, line))
                    bar.update(line - done)
                    done, docs, problems = line, [], []
            self.commit_chunk(corpus, docs, problems, next_marker=(corpus + 1, 0))
            bar.update(max(line_counts[corpus] - done, 0))

    def run(self, *, chunk_size: int, progress: bool, factory: str, lexical: LexicalSettings | None) -> None:
        """Stream what is left, then assemble and stage the collection and its lexical index in ``work_dir/staging``."""
        remove_shards_from(self.checkpoint.shards_dir, self.progress.next_shard)  # from a chunk never committed
        counts = [count_lines(p) for p in self.corpora] if progress else [0] * len(self.corpora)
        done = sum(counts[: self.progress.corpus]) + self.progress.line
        with tqdm(total=sum(counts), initial=done, unit="doc", disable=not progress, dynamic_ncols=True) as bar:
            self.stream(chunk_size=chunk_size, bar=bar, line_counts=counts)
        live = self.checkpoint.store.all_row_ids()
        if len(live) == 0:
            raise CorpusError(
                f"no valid documents in {[str(p) for p in self.corpora]}: {self.progress.malformed} malformed "
                "line(s)" + "".join(f"; {p}" for p in self.problems()[:3])
            )
        shards, count = self.checkpoint.shards_dir, self.progress.next_shard
        dense, chunks = assemble_dense(shards, count, live, dim=self.dim, factory=factory)
        staging = self.checkpoint.work_dir / STAGING_DIR
        info = stage_collection(
            staging,
            dense,
            self.checkpoint.store,
            identity=self.checkpoint.identity,
            chunks=chunks,
            chunking=self.chunking,
        )
        if lexical is not None:
            stage_lexical(staging, self.checkpoint.store, info, lexical, progress=progress)

    def problems(self) -> list[CorpusProblem]:
        """The first :data:`MAX_REPORTED_PROBLEMS` malformed lines, across resumed runs."""
        rows = self.checkpoint.problems(limit=MAX_REPORTED_PROBLEMS)
        return [CorpusProblem(line=line, reason=reason, path=self.corpora[corpus]) for corpus, line, reason in rows]
