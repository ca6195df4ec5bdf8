"""What one running app holds, and the dependencies through which routes reach it.

Built by :func:`app.api.main.create_app`, stored on ``app.state.service``; routes
never import it from a module-level variable, they ask for it with ``Depends``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.api.batching import MicroBatcher
from app.api.metrics import Metrics
from app.api.schemas_jobs import JobService
from app.engine.engine import BatchResult, EmbedJob, EmbedResult, SearchEngine, SearchJob
from app.engine.reranking import RerankJob
from app.errors import NotReadyError
from app.publishing.document_writes import DocumentWriter
from app.publishing.publisher import ExpertPublisher
from app.settings import Settings
from experts import CrossEncoder, PairScores


@dataclass(frozen=True)
class Runtime:
    """The parts that exist once the base encoder has loaded: what a serving route works with."""

    settings: Settings
    metrics: Metrics
    engine: SearchEngine
    publisher: ExpertPublisher
    documents: DocumentWriter
    searches: MicroBatcher[SearchJob, BatchResult]
    embeddings: MicroBatcher[EmbedJob, EmbedResult]
    #: Unix time the runtime was built: ``created`` of ``base`` and ``auto`` in ``/v1/models``.
    started_at: float = field(default_factory=time.time)
    #: The cross-encoder and its micro-batcher (RR_RERANKER); None when reranking is off.
    reranker: CrossEncoder | None = None
    reranks: MicroBatcher[RerankJob, list[PairScores]] | None = None
    #: The background jobs of ``/admin/jobs`` (``rr serve`` makes them); None: this app runs no jobs.
    jobs: JobService | None = None


@dataclass
class ServiceState:
    """The service as a whole, from the first moment (probes answer before anything is loaded)."""

    settings: Settings
    metrics: Metrics
    runtime: Runtime | None = None
    #: What start-up is doing, in words ("loading the base encoder", "serving", ...).
    phase: str = "starting"
    #: True once start-up finished (even if some published experts failed to load).
    serving: bool = False
    #: Why start-up failed as a whole (base encoder or registry unreadable).
    startup_error: str | None = None
    closing: bool = False
    #: The thread running ``create_app``'s ``after_start`` (``rr demo``'s building and training), once started:
    #: shutdown waits for it (it stops at its next step once ``closing``) before the process exits.
    beside: threading.Thread | None = None
    #: Experts being built in the background by the process serving (``rr demo``): name -> what it is doing.
    #: Replaced whole on each change (request handlers read it without a lock; writers, the demo's building and
    #: training threads, take ``_building_lock``).
    building: dict[str, str] = field(default_factory=dict)
    _building_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set_building(self, name: str, doing: str | None) -> None:
        """Say what the background build of ``name`` is doing now; None: it is done (published or given up)."""
        with self._building_lock:
            rest = {key: value for key, value in self.building.items() if key != name}
            self.building = rest if doing is None else {**rest, name: doing}

    def not_ready_reason(self) -> str | None:
        """None when the base encoder and every published expert are loaded; else why not."""
        if self.closing:
            return "the server is shutting down"
        if self.startup_error is not None:
            return f"start-up failed: {self.startup_error}"
        if not self.serving or self.runtime is None:
            return f"starting: {self.phase}"
        if self.building and not self.runtime.engine.experts:
            return "building the first expert: " + "; ".join(
                f"{n}: {doing}" for n, doing in sorted(self.building.items())
            )
        failed = {name: reason for name, reason in self.runtime.publisher.failed.items() if name not in self.building}
        if failed:
            return "published experts failed to load: " + "; ".join(
                f"{name}: {reason}" for name, reason in sorted(failed.items())
            )
        return None


def get_service(request: Request) -> ServiceState:
    return request.app.state.service


def get_runtime(service: Annotated[ServiceState, Depends(get_service)]) -> Runtime:
    """The runtime, once the service answers requests; 503 + Retry-After before that."""
    if not service.serving or service.closing or service.runtime is None:
        reason = service.not_ready_reason() or "not serving yet"
        raise NotReadyError(f"not ready: {reason}", retry_after=service.settings.retry_after_s)
    return service.runtime


Service = Annotated[ServiceState, Depends(get_service)]
Serving = Annotated[Runtime, Depends(get_runtime)]
