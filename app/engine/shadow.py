"""Shadows: a candidate version of an expert searched beside the serving one, off the answers' path.

A shadow of expert ``name`` holds a candidate version loaded read-only beside the serving one. Of the
queries that ``name`` answers (the first expert of their routing decision, routed or named), a seeded
share is searched with the candidate too: its adapter pass and its index, at the same depth, with the
request's retrieval options and filter, as the candidate would serve them. The serving version's own
top 10 (its list before any fan-out merge) and the candidate's are compared by document id (row ids
differ between versions): their overlap, whether they differ at all, whether the top 1 differs, and
how far the shared documents moved.

The batch that answered only puts the queries in a bounded queue (:meth:`Shadows.offer`); one worker
thread searches them after the answers are out. When the queue is full the work is dropped, and
counted. The candidate's encoder passes are bulk passes (:mod:`experts.model_lock`): searches go
first. Nothing of a shadow changes an answer, and nothing of it survives a restart.

>>> shadows.start(candidate, serving=engine.experts["cacm"], path="v2/cacm", share=0.1, seed=1)  # doctest: +SKIP
>>> shadows.get("cacm").report().mean_overlap  # doctest: +SKIP
0.93
"""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.engine.loading import LoadedExpert, unload_expert
from app.engine.retrieval import Retrieval
from app.engine.shadow_compare import SHADOW_DEPTH, Comparison, ShadowQuery, compare_top, search_candidate
from app.errors import ConflictError, UnknownShadowError
from experts import Encoder

logger = logging.getLogger(__name__)

#: The default seed of a shadow's draws: the same share of the same query stream is shadowed every time.
SHADOW_SEED = 4099
#: Queries waiting for the worker at most; past it a batch's shadow work is dropped (and counted).
SHADOW_QUEUE = 512


class ShadowObserver(Protocol):
    """Who hears of each comparison and each drop (the service's Prometheus metrics)."""

    def shadowed(self, expert: str, comparison: Comparison) -> None: ...

    def dropped(self, expert: str, count: int) -> None: ...


@dataclass(frozen=True)
class ShadowReport:
    """What a shadow has seen so far; the means are None until a query was shadowed."""

    expert: str
    path: str
    version: int
    serving_version: int
    share: float
    seed: int
    started_at: float
    running: bool
    shadowed: int
    pending: int
    dropped: int
    errors: int
    mean_overlap: float | None
    differing: float | None
    top1_differing: float | None
    mean_displacement: float | None


class Shadow:
    """One expert's shadow: the candidate, the seeded draws and the running figures (changed under ``lock``)."""

    def __init__(self, candidate: LoadedExpert, serving: LoadedExpert, *, path: str, share: float, seed: int) -> None:
        self.candidate, self.path, self.share, self.seed = candidate, path, share, seed
        self.serving_version = serving.manifest.version
        #: The serving version's documents: a publish that changes them (replace, rollback, remove) ends the shadow.
        self.serving_documents = serving.documents
        self.started_at = time.time()
        self.lock = threading.Lock()  # the figures and the draws
        self.busy = threading.Lock()  # held while the candidate is searched: a stop waits, then unloads it
        self.stopped = False
        self._rng = random.Random(seed)
        self.shadowed = self.pending = self.dropped = self.errors = 0
        self._overlap = self._displacement = 0.0
        self._differing = self._top1_differing = 0

    @property
    def name(self) -> str:
        return self.candidate.name

    def draw(self) -> bool:
        """Under ``lock``: whether the next query answered by the serving version is shadowed."""
        return self._rng.random() < self.share

    def record(self, comparison: Comparison) -> None:
        with self.lock:
            self.shadowed += 1
            self._overlap += comparison.overlap
            self._displacement += comparison.displacement
            self._differing += comparison.differs
            self._top1_differing += comparison.top1_differs

    def report(self) -> ShadowReport:
        with self.lock:
            n = self.shadowed
            return ShadowReport(
                expert=self.name,
                path=self.path,
                version=self.candidate.manifest.version,
                serving_version=self.serving_version,
                share=self.share,
                seed=self.seed,
                started_at=self.started_at,
                running=not self.stopped,
                shadowed=n,
                pending=self.pending,
                dropped=self.dropped,
                errors=self.errors,
                mean_overlap=self._overlap / n if n else None,
                differing=self._differing / n if n else None,
                top1_differing=self._top1_differing / n if n else None,
                mean_displacement=self._displacement / n if n else None,
            )


class Shadows:
    """Every running shadow, the bounded queue of shadow work and the one worker thread that does it.

    The worker starts with the first shadow; :meth:`close` stops it and every shadow.
    """

    def __init__(self, encoder: Encoder, *, retrieval: Retrieval, max_length: int, limit: int = SHADOW_QUEUE) -> None:
        self.encoder, self.retrieval, self.max_length, self.limit = encoder, retrieval, max_length, limit
        self.observer: ShadowObserver | None = None
        self._shadows: dict[str, Shadow] = {}  # replaced whole: read without the lock
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[tuple[Shadow, ShadowQuery]] | None] = queue.Queue()
        self._pending = 0
        self._worker: threading.Thread | None = None

    @property
    def experts(self) -> frozenset[str]:
        """The experts shadowed now (read without a lock: a batch checks it for every search)."""
        return frozenset(self._shadows)

    def get(self, name: str) -> Shadow:
        try:
            return self._shadows[name]
        except KeyError:
            raise _no_shadow(name, self._shadows) from None

    def check_free(self, name: str) -> None:
        """Refuse (409) a second shadow of ``name``, naming the one that runs."""
        shadow = self._shadows.get(name)
        if shadow is not None:
            raise ConflictError(_running(shadow))

    def start(self, candidate: LoadedExpert, *, serving: LoadedExpert, path: str, share: float, seed: int) -> Shadow:
        """Shadow ``serving`` with ``candidate`` (loaded by the caller; it is unloaded when the shadow stops)."""
        if not 0.0 < share <= 1.0 or math.isnan(share):
            raise ValueError(f"share must be above 0 and at most 1, got {share}")
        with self._lock:
            if candidate.name in self._shadows:
                raise ConflictError(_running(self._shadows[candidate.name]))
            shadow = Shadow(candidate, serving, path=path, share=share, seed=seed)
            self._shadows = {**self._shadows, candidate.name: shadow}
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="rr-shadow", daemon=True)
                self._worker.start()
        logger.info(
            "shadowing expert %r v%d with v%d from %s, share %.3f",
            shadow.name,
            shadow.serving_version,
            candidate.manifest.version,
            path,
            share,
        )
        return shadow

    def stop(self, name: str, *, reason: str) -> ShadowReport:
        """End ``name``'s shadow: no new work for it, its search in progress finishes, the candidate unloads."""
        with self._lock:
            shadow = self._shadows.get(name)
            if shadow is None:
                raise _no_shadow(name, self._shadows)
            self._shadows = {key: value for key, value in self._shadows.items() if key != name}
        self._end(shadow, reason)
        return shadow.report()

    def retire(self, serving: Mapping[str, LoadedExpert]) -> None:
        """A publish: end (in a thread of its own) the shadows whose serving version it replaced or removed."""
        with self._lock:
            gone = [
                s
                for s in self._shadows.values()
                if getattr(serving.get(s.name), "documents", None) is not s.serving_documents
            ]
            if not gone:
                return
            self._shadows = {key: value for key, value in self._shadows.items() if value not in gone}
        for shadow in gone:
            now = serving.get(shadow.name)
            reason = "the expert was removed" if now is None else f"the expert now serves v{now.manifest.version}"
            threading.Thread(target=self._end, args=(shadow, reason), name=f"rr-shadow-stop-{shadow.name}").start()

    def close(self) -> None:
        """Stop every shadow and the worker (the engine closes)."""
        with self._lock:
            shadows, self._shadows = list(self._shadows.values()), {}
            worker, self._worker = self._worker, None
        for shadow in shadows:
            self._end(shadow, "the service stops")
        if worker is not None:
            self._queue.put(None)
            worker.join(timeout=30)

    def _end(self, shadow: Shadow, reason: str) -> None:
        with shadow.busy:
            shadow.stopped = True
        unload_expert(shadow.candidate, self.encoder)
        report = shadow.report()
        logger.info(
            "stopped the shadow of expert %r (candidate v%d from %s): %s; %d queries shadowed, mean top-%d overlap %s",
            shadow.name,
            report.version,
            shadow.path,
            reason,
            report.shadowed,
            SHADOW_DEPTH,
            "none" if report.mean_overlap is None else f"{report.mean_overlap:.4f}",
        )

    # ------------------------------------------------------------------ the work
    def offer(self, queries: Sequence[ShadowQuery]) -> None:
        """Queue the drawn share of ``queries`` for the worker; never blocks, drops (and counts) when full."""
        dropped: dict[Shadow, int] = {}
        with self._lock:
            picked = []
            for query in queries:
                shadow = self._shadows.get(query.expert)
                if shadow is not None:
                    with shadow.lock:
                        if shadow.draw():
                            picked.append((shadow, query))
            if not picked:
                return
            full = self._pending + len(picked) > self.limit
            if not full:
                self._pending += len(picked)
            for shadow, _ in picked:
                with shadow.lock:
                    if full:
                        shadow.dropped += 1
                        dropped[shadow] = dropped.get(shadow, 0) + 1
                    else:
                        shadow.pending += 1
        if not full:
            self._queue.put(picked)
            return
        for shadow, count in dropped.items():
            if self.observer is not None:
                self.observer.dropped(shadow.name, count)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            groups: dict[Shadow, list[ShadowQuery]] = {}
            for shadow, query in item:
                groups.setdefault(shadow, []).append(query)
            for shadow, group in groups.items():
                try:
                    self._compare(shadow, group)
                except Exception:  # the worker outlives any one failure
                    logger.exception("shadow work for expert %r failed", shadow.name)
                finally:
                    with shadow.lock:
                        shadow.pending -= len(group)
            with self._lock:
                self._pending -= len(item)

    def _compare(self, shadow: Shadow, group: list[ShadowQuery]) -> None:
        with shadow.busy:
            if shadow.stopped:
                return
            try:
                found = search_candidate(
                    self.encoder, shadow.candidate, group, default=self.retrieval, max_length=self.max_length
                )
            except Exception as exc:
                logger.warning("shadow search of expert %r's candidate failed: %s", shadow.name, exc)
                found = [None] * len(group)
        for query, ids in zip(group, found, strict=True):
            if ids is None:
                with shadow.lock:
                    shadow.errors += 1
                continue
            comparison = compare_top(query.served, ids)
            shadow.record(comparison)
            if self.observer is not None:
                self.observer.shadowed(shadow.name, comparison)


def _no_shadow(name: str, shadows: Mapping[str, Shadow]) -> UnknownShadowError:
    return UnknownShadowError(
        f"expert {name!r} has no shadow running. Shadowed experts: {sorted(shadows)}", details={"expert": name}
    )


def _running(shadow: Shadow) -> str:
    return (
        f"expert {shadow.name!r} is already shadowed by v{shadow.candidate.manifest.version} from {shadow.path!r} "
        f"(share {shadow.share}); DELETE /admin/experts/{shadow.name}/shadow first"
    )
