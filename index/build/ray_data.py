"""The batch indexing job with its embedding on Ray Data: ``rr index --engine ray``.

Embedding is the whole cost of indexing (everything else takes seconds), so
this engine hands exactly that to Ray and keeps every other step of the local
job. The corpus is read as a Ray dataset (line ranges of each corpus file,
parsed by :func:`index.corpus.read_corpus` in Ray tasks), embedded by
``map_batches`` on an actor pool whose actors each hold one encoder (built by
``embedder``, so this package never imports torch), and streamed back to the
driver in corpus order (``preserve_order``). The driver runs the local job,
:func:`index.build.indexing.build_index`, unchanged, with an ``embed`` that takes
the next vectors off that stream. So the Ray engine writes the same
checkpoint, resumes from it (a run started on one engine can be finished on
the other), writes the same per-chunk vector shards and merges them with the
same code into the same index, and publishes with the same atomic rename.

Why not let the actors write shard indexes that the driver merges? Row ids
are assigned by the docstore in corpus order, duplicate ids (``upsert``) are
resolved in corpus order, and the checkpoint must agree with the shards after
a ``kill -9``; doing all three on the driver, which only receives vectors,
gives an index identical to the local engine's (same rows, same ids, vectors
equal up to float rounding from a different batching) with no second merge
code path to get wrong. The driver's part (parse, SQLite insert, shard write)
runs at tens of thousands of documents per second, far above what an encoder
pool reaches, so it is not the bottleneck until many GPUs feed one driver.

Every vector comes back with a digest of the passage it embeds, and the
driver checks it against the passage the job asks for: a stream out of step
with the job fails loudly instead of indexing a vector under the wrong row.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.build.checkpoint import CHECKPOINT_FILE, BuildIdentity, Checkpoint, lock_work_dir
from index.build.embedding import EmbedFn
from index.build.indexing import DEFAULT_LEXICAL, BuildReport, build_index
from index.corpus import Document, corpus_fingerprint, count_lines, read_corpus
from index.errors import CorpusError, InvalidParameterError
from index.long_documents import ChunkSettings
from index.store.analysis import LexicalSettings

__all__ = ["RayEngine", "build_index_on_ray"]

logger = logging.getLogger(__name__)

#: Corpus lines per read task, at most: each task is one block of rows, and a block goes to one actor, so
#: smaller corpora are cut finer (``TASKS_PER_ACTOR`` tasks per actor at least) to keep every actor busy.
#: A task skips the lines before its range unparsed (what a resumed local build does too): about 0.1 s per
#: million lines, so even a corpus of millions spends seconds on it, against hours of embedding.
LINES_PER_TASK = 4096
TASKS_PER_ACTOR = 4


@dataclass(frozen=True)
class RayEngine:
    """How the embedding runs on Ray: the pool of encoder actors and what each one holds.

    ``actors`` is the pool size (None: as many as the cluster's CPUs, or GPUs
    when ``gpus_per_actor`` > 0, allow); ``batch_size`` is the rows handed to
    an actor at once; ``cpus_per_actor`` is both the actor's Ray reservation
    and the torch threads its ``embedder`` should use.
    """

    actors: int | None = None
    batch_size: int = 256
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.actors is not None and (isinstance(self.actors, bool) or self.actors < 1):
            raise InvalidParameterError(f"actors must be a positive integer or None, got {self.actors!r}")
        if self.batch_size < 1:
            raise InvalidParameterError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise InvalidParameterError(
                f"cpus_per_actor must be > 0 and gpus_per_actor >= 0, got {self.cpus_per_actor}, {self.gpus_per_actor}"
            )

    def pool_size(self, resources: dict[str, float]) -> int:
        """The actor count: the one given, else what the cluster's ``resources`` hold."""
        if self.actors is not None:
            return self.actors
        if self.gpus_per_actor > 0:
            fits = resources.get("GPU", 0.0) / self.gpus_per_actor
            kind = "GPU"
        else:
            fits = resources.get("CPU", 0.0) / self.cpus_per_actor
            kind = "CPU"
        if fits < 1:
            raise InvalidParameterError(f"the Ray cluster has no room for one encoder actor ({kind}: {resources})")
        return int(fits)


def passage_digest(passage: str) -> str:
    """A short digest that ties a vector to the passage it embeds (checked by the driver)."""
    return hashlib.blake2b(passage.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _read_range(task: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A Ray task: the documents of lines ``start+1 .. stop`` of one corpus, as rows (malformed lines are the job's)."""
    for line, item in read_corpus(Path(task["path"]), start_line=int(task["start"])):
        if line > task["stop"]:
            break
        if isinstance(item, Document):
            yield {"line": line, "corpus": task["corpus"], "passage": item.passage()}


class _EmbedActor:
    """One encoder per actor, built once by ``embedder`` and reused for every batch."""

    def __init__(self, embedder: Callable[[], EmbedFn]) -> None:
        self.embed = embedder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        passages = [str(p) for p in batch["passage"]]
        vectors = np.asarray(self.embed(passages), dtype=np.float32)
        return {
            "corpus": batch["corpus"],
            "line": batch["line"],
            "digest": np.array([passage_digest(p) for p in passages]),
            "vector": vectors,
        }


def _read_tasks(corpora: Sequence[Path], start: tuple[int, int], actors: int) -> list[dict[str, Any]]:
    """Line ranges of every corpus from the resume marker ``start`` (corpus, lines done) on."""
    spans = []
    for number in range(start[0], len(corpora)):
        first = start[1] if number == start[0] else 0
        spans.append((number, corpora[number], first, count_lines(corpora[number])))
    left = sum(max(total - first, 0) for *_, first, total in spans)
    lines_per_task = max(1, min(LINES_PER_TASK, -(-left // (actors * TASKS_PER_ACTOR))))
    tasks = []
    for number, path, first, total in spans:
        for begin in range(first, total, lines_per_task):
            tasks.append(
                {"corpus": number, "path": str(path), "start": begin, "stop": min(begin + lines_per_task, total)}
            )
    return tasks


class OrderedVectors:
    """The ``embed`` the local job calls: the next vectors of the stream, checked against its passages.

    ``batches`` yields dicts with ``digest`` (n,) and ``vector`` (n, dim) in
    corpus order; a call for n passages takes the next n rows.
    """

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self._batches = batches
        self._pending: deque[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = deque()
        self.delivered = 0

    def _fill(self, rows: int) -> None:
        held = sum(len(digests) for digests, *_ in self._pending)
        while held < rows:
            try:
                batch = next(self._batches)
            except StopIteration:
                raise CorpusError(
                    f"the Ray stream ended after {self.delivered + held} documents, but the job asked for "
                    f"{self.delivered + rows}: did a corpus file change during the build?"
                ) from None
            parts = (
                np.asarray(batch["digest"]),
                np.asarray(batch["vector"], dtype=np.float32),
                np.asarray(batch["corpus"]),
                np.asarray(batch["line"]),
            )
            self._pending.append(parts)
            held += len(parts[0])

    def _take(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self._fill(rows)
        pieces: list[tuple[np.ndarray, ...]] = []
        while rows:
            head = self._pending.popleft()
            if len(head[0]) > rows:
                self._pending.appendleft(tuple(part[rows:] for part in head))  # type: ignore[arg-type]
                head = tuple(part[:rows] for part in head)  # type: ignore[assignment]
            pieces.append(head)
            rows -= len(head[0])
        return tuple(np.concatenate([piece[i] for piece in pieces]) for i in range(4))  # type: ignore[return-value]

    def __call__(self, passages: list[str]) -> np.ndarray:
        if not passages:
            return np.zeros((0, 0), dtype=np.float32)
        digests, vectors, corpora, lines = self._take(len(passages))
        for position, passage in enumerate(passages):
            if digests[position] != passage_digest(passage):
                raise CorpusError(
                    f"the Ray stream is out of step with the job at document {self.delivered + position + 1} "
                    f"(stream: corpus {int(corpora[position])} line {int(lines[position])}); the build stopped "
                    "before writing it: did a corpus file change during the build?"
                )
        self.delivered += len(passages)
        return vectors

    def close(self) -> None:
        """Stop the pipeline (its generator) if the job ends before the stream does."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def _resume_marker(work_dir: Path, identity: BuildIdentity) -> tuple[int, int]:
    """Where the local job will start reading: the checkpoint's marker, or the beginning."""
    if not (work_dir / CHECKPOINT_FILE).exists():
        return 0, 0
    with lock_work_dir(work_dir), Checkpoint.open(work_dir, identity) as checkpoint:  # a mismatch is discarded here
        progress = checkpoint.progress()
    return progress.corpus, progress.line


def _vector_stream(
    corpora: list[Path], start: tuple[int, int], *, embedder: Callable[[], EmbedFn], engine: RayEngine
) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data pipeline: read ranges -> parse -> embed on the actor pool -> batches in corpus order."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    if not ray.is_initialized():
        raise InvalidParameterError("Ray is not initialised: call ray.init() (or ray.init(address=...)) first")
    size = engine.pool_size(ray.cluster_resources())
    tasks = _read_tasks(corpora, start, size)
    if not tasks:
        return
    logger.info("embedding on Ray: %d read task(s), %d encoder actor(s)", len(tasks), size)
    context = DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the job shows its own bar
    try:
        dataset = (
            ray.data.from_items(tasks, override_num_blocks=len(tasks))
            # Reading is light: no CPU reserved, so that the actors can take every CPU.
            .flat_map(_read_range, num_cpus=0)
            .map_batches(
                _EmbedActor,
                fn_constructor_kwargs={"embedder": embedder},
                batch_size=engine.batch_size,
                compute=ActorPoolStrategy(size=size),
                num_cpus=engine.cpus_per_actor,
                num_gpus=engine.gpus_per_actor or None,
                batch_format="numpy",
            )
        )
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)


def build_index_on_ray(
    corpora: Sequence[Path],
    *,
    embedder: Callable[[], EmbedFn],
    dim: int,
    out_dir: Path,
    work_dir: Path,
    build_key: str,
    engine: RayEngine = RayEngine(),
    factory: str = "Flat",
    chunk_size: int = 1024,
    upsert: bool = False,
    progress: bool = True,
    lexical: LexicalSettings | None = DEFAULT_LEXICAL,
    chunking: ChunkSettings | None = None,
) -> BuildReport:
    """:func:`~index.build.indexing.build_index` with the embedding done on the current Ray cluster.

    The actors embed whole passages, so ``chunking`` may only be None or a
    ``"truncate"`` policy (recorded in ``index.json``); chunking on Ray is not
    implemented yet.

    ``embedder`` is called once in each actor and returns that actor's embed
    function (so it must be picklable: a module-level function or a
    ``functools.partial`` of one). It must embed exactly as the ``embed`` of a
    local build with the same ``build_key`` would, which is what makes the
    checkpoint shareable between engines. Call ``ray.init`` first.

    >>> ray.init(num_cpus=8)  # doctest: +SKIP
    >>> build_index_on_ray([Path("corpus.jsonl")], embedder=partial(make_embed, threads=1), dim=384,
    ...                    out_dir=Path("idx/v2"), work_dir=Path("idx/.work"), build_key=key)  # doctest: +SKIP
    """
    if chunking is not None and chunking.splits:
        raise InvalidParameterError(
            f"long-document policy {chunking.policy!r} is not available on Ray yet (its actors embed whole "
            "passages); use ChunkSettings('truncate') or build locally"
        )
    corpora = [Path(p) for p in corpora]
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    identity = BuildIdentity(build_key, dim, factory, upsert, tuple(corpus_fingerprint(p) for p in corpora))
    start = _resume_marker(work_dir, identity) if corpora and work_dir.is_dir() else (0, 0)
    stream = OrderedVectors(_vector_stream(corpora, start, embedder=embedder, engine=engine))
    try:
        return build_index(
            corpora,
            embed=stream,
            dim=dim,
            out_dir=out_dir,
            work_dir=work_dir,
            build_key=build_key,
            factory=factory,
            chunk_size=chunk_size,
            upsert=upsert,
            progress=progress,
            lexical=lexical,
            chunking=chunking,
        )
    finally:
        stream.close()
