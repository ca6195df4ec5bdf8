"""The app factory: ``create_app(settings)`` builds the FastAPI app; its lifespan loads and unloads.

Start-up runs in the background so that ``/healthz`` answers at once and
``/readyz`` can say what is still loading: the base encoder, then every
expert the registry lists. Until that is done the search routes answer 503
with ``Retry-After``. Shutdown finishes the micro-batch in progress, then
unpublishes every expert (each unloads when nothing holds it).

>>> app = create_app(Settings(data_dir="data/experts"))
>>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.api.access_log import with_key_names
from app.api.batching import MicroBatcher
from app.api.body_limit import BodySizeLimitMiddleware
from app.api.error_handlers import install_error_handlers
from app.api.keys import KeyStore
from app.api.log_redaction import install_on_root, uvicorn_log_config
from app.api.metrics import Metrics, MetricsMiddleware
from app.api.routes import admin as routes_admin
from app.api.routes import console as routes_console
from app.api.routes import documents as routes_documents
from app.api.routes import embeddings as routes_embeddings
from app.api.routes import experts as routes_experts
from app.api.routes import jobs as routes_jobs
from app.api.routes import keys as routes_keys
from app.api.routes import models as routes_models
from app.api.routes import ops as routes_ops
from app.api.routes import rerank as routes_rerank
from app.api.routes import search as routes_search
from app.api.routes import shadows as routes_shadows
from app.api.routes import uploads as routes_uploads
from app.api.schemas_jobs import JobServiceFactory
from app.api.state import Runtime, ServiceState
from app.engine.engine import BatchResult, SearchEngine, SearchJob
from app.engine.loading import LoadedExpert, open_encoder
from app.engine.reranking import RerankJob, open_reranker, rerank_jobs
from app.publishing.document_writes import DocumentWriter
from app.publishing.publisher import ExpertPublisher
from app.settings import Settings
from experts import CrossEncoder, Encoder, PairScores, ThreadChoice

logger = logging.getLogger(__name__)

_DESCRIPTION = """
Expert-routing retrieval: one shared encoder, one LoRA adapter per domain, a pilot-embedding router,
one FAISS index per expert. `POST /search` routes each query to its expert; `POST /v1/embeddings`
is OpenAI-compatible; `POST /v1/rerank` (Cohere/Jina shape) reranks with a cross-encoder when RR_RERANKER
is set; `/admin/experts` publishes and unpublishes experts while the service runs
(`Authorization: Bearer <RR_ADMIN_KEY>`). Errors are always `{"error": {"type", "message", "details"}}`.
A browser console for people who run the service is at [`/console/`](/console/).
"""


def _load(service: ServiceState, encoder: Encoder | None, jobs: JobServiceFactory | None = None) -> Runtime:
    """Blocking start-up (runs in a worker thread): the encoder, the engine, the registry's experts."""
    settings = service.settings
    if encoder is None:
        service.phase = "loading the base encoder"
        encoder = open_encoder(settings)
    if settings.reranker is not None:
        service.phase = "loading the reranker"
    reranker = open_reranker(settings)
    engine = SearchEngine(encoder, settings.engine_config(), take_out_broken=True)
    engine.shadows.observer = service.metrics.shadows
    publisher = ExpertPublisher(
        engine,
        settings.data_dir,
        verify_checksums=settings.verify_checksums,
        merge_policy=settings.merge_policy(),
        keep_versions=settings.keep_versions,
        gate_margin=settings.gate_margin,
        gate_queries=settings.gate_queries,
    )
    service.phase = "loading experts"
    try:
        publisher.restore(progress=lambda phase: setattr(service, "phase", phase))
    except BaseException:
        engine.close()  # give back what was loaded before the failure (the encoder may be shared)
        raise
    for expert in engine.experts.values():  # writes left over from the last run may be due for a merge
        expert.documents.start_merge()
    metrics = service.metrics

    def run_searches(jobs: list[SearchJob]) -> list[BatchResult | Exception]:
        outcomes = engine.search_jobs(jobs)
        metrics.observe_search_batch(outcomes)
        return outcomes

    batching: dict[str, Any] = {
        "max_wait_s": settings.batch_wait_ms / 1000,
        "max_batch": settings.batch_max_queries,
        "max_queue": settings.queue_max_queries,
        "retry_after_s": settings.retry_after_s,
        "metrics": metrics,
    }
    return Runtime(
        settings=settings,
        metrics=metrics,
        engine=engine,
        publisher=publisher,
        documents=DocumentWriter(engine, check_servable=publisher.check_servable),
        searches=MicroBatcher(
            run_searches,
            size=lambda job: len(job.queries),
            kind="search",
            in_flight=settings.search_batches_in_flight,
            **batching,
        ),
        embeddings=MicroBatcher(engine.embed_jobs, size=lambda job: len(job.texts), kind="embeddings", **batching),
        reranker=reranker,
        reranks=None if reranker is None else _rerank_batcher(reranker, metrics, batching),
        jobs=None if jobs is None else jobs(engine, publisher),
    )


def _rerank_batcher(
    reranker: CrossEncoder, metrics: Metrics, batching: dict[str, Any]
) -> MicroBatcher[RerankJob, list[PairScores]]:
    """The rerank micro-batcher: the pairs of every job in a batch scored in shared passes, timed as stage ``rerank``."""

    def run(jobs: list[RerankJob]) -> list[list[PairScores]]:
        started = time.perf_counter()
        outcomes = rerank_jobs(reranker, jobs)
        metrics.stage_seconds.labels("rerank").observe(time.perf_counter() - started)
        return outcomes

    return MicroBatcher(run, size=lambda job: job.size, kind="rerank", **batching)


#: Work a process serving may run beside the service once it serves (``rr demo`` builds its experts so).
AfterStart = Callable[[ServiceState], None]


async def _start(
    service: ServiceState,
    encoder: Encoder | None,
    after_start: AfterStart | None = None,
    jobs: JobServiceFactory | None = None,
) -> None:
    try:
        runtime = await asyncio.to_thread(_load, service, encoder, jobs)
    except Exception as exc:  # the process stays up so that /readyz can say why
        logger.exception("start-up failed")
        service.startup_error = f"{type(exc).__name__}: {exc}"
        service.phase = "failed"
        return
    await runtime.searches.start()
    await runtime.embeddings.start()
    if runtime.reranks is not None:
        await runtime.reranks.start()
    service.runtime = runtime
    service.serving = True
    service.phase = "serving"
    logger.info("serving %d experts: %s", len(runtime.engine.experts), sorted(runtime.engine.experts))
    if after_start is not None:  # its own thread: the event loop keeps answering (and a failure there stays there)
        service.beside = threading.Thread(
            target=_run_after_start, args=(after_start, service), name="rr-after-start", daemon=True
        )
        service.beside.start()


#: How long shutdown waits for the work beside the service (it stops at its next step: a training step, a batch).
BESIDE_GRACE_S = 60.0


async def _stop_beside(service: ServiceState) -> None:
    """Wait for the ``after_start`` work to see ``closing`` and end, before the runtime it uses is closed.

    Else the process could exit while that thread is inside a torch operator, which aborts it ("terminate called
    without an active exception", exit 134: ``rr demo`` stopped by Ctrl-C while training).
    """
    beside = service.beside
    if beside is None or not beside.is_alive():
        return
    logger.info("waiting for the work beside the service to stop (at its next step)")
    await asyncio.to_thread(beside.join, BESIDE_GRACE_S)
    if beside.is_alive():
        logger.warning("the work beside the service did not stop within %.0f s; exiting anyway", BESIDE_GRACE_S)


def _run_after_start(after_start: AfterStart, service: ServiceState) -> None:
    try:
        after_start(service)
    except Exception:
        logger.exception("the work started beside the service failed")


def create_app(
    settings: Settings,
    *,
    encoder: Encoder | None = None,
    after_start: AfterStart | None = None,
    building: Sequence[str] = (),
    jobs: JobServiceFactory | None = None,
) -> FastAPI:
    """The service for ``settings``; pass ``encoder`` to reuse one already loaded (the demo, tests).

    ``jobs(engine, publisher)`` makes the runner of ``/admin/jobs`` once start-up has loaded them (``rr serve``
    passes :func:`app.offline.job_runner.job_runner_factory`; without it those routes answer 501).

    ``after_start(service)`` runs in a thread of its own once the service serves (``rr demo``: build the experts
    not built yet and publish each as it is done, saying so with ``service.set_building``); it should stop early
    when ``service.closing`` turns true. ``building`` names the experts it will build, shown as queued from the
    first request on (``/readyz`` is not ready until one expert serves).

    The API keys load here, before anything else: a bad RR_KEYS_FILE is a
    start-up error (KeyFileError naming the entry), not a server refusing every request.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service: ServiceState = app.state.service
        starting = asyncio.create_task(_start(service, encoder, after_start, jobs), name="rr-start-up")
        try:
            yield
        finally:
            service.closing = True
            await starting  # a load in progress cannot be interrupted; let it finish, then undo it
            await _stop_beside(service)
            if service.runtime is not None:
                if service.runtime.jobs is not None:  # the running job stops at its next batch or step
                    await asyncio.to_thread(service.runtime.jobs.close)
                await service.runtime.searches.stop()
                await service.runtime.embeddings.stop()
                if service.runtime.reranks is not None:
                    await service.runtime.reranks.stop()
                await asyncio.to_thread(_finish_merges, service.runtime)
                service.runtime.engine.close()

    app = FastAPI(
        title="router-retriever",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = Metrics(lambda: _published(service), threads=lambda: _thread_choice(service))
    service = ServiceState(settings=settings, metrics=metrics)
    service.building = {name: "queued" for name in building}
    app.state.service = service
    app.state.keys = KeyStore(settings)  # app.api.auth reads the keys in force here
    install_error_handlers(app)
    modules = (
        routes_search,
        routes_embeddings,
        routes_models,
        routes_rerank,
        routes_experts,
        routes_admin,
        routes_shadows,
        routes_jobs,
        routes_uploads,
        routes_keys,
        routes_documents,
        routes_ops,
        routes_console,
    )
    for module in modules:
        app.include_router(module.router)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
        upload_routes=frozenset({("POST", "/admin/experts"), ("POST", "/admin/uploads")}),
        pattern_limits=(
            *((m, p, settings.max_documents_body_bytes) for m, p in routes_documents.DOCUMENT_BODY_ROUTES),
            ("POST", re.compile(r"/v1/embeddings"), settings.max_embeddings_body_bytes),
        ),
    )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: counts 413s too
    return app


def _finish_merges(runtime: Runtime) -> None:
    """Let running merges end (within the drain timeout) rather than dropping their work at exit."""
    deadline = time.monotonic() + runtime.settings.drain_timeout_s
    for expert in list(runtime.engine.experts.values()):
        expert.documents.wait_merge(timeout=max(0.0, deadline - time.monotonic()))


def _published(service: ServiceState) -> Mapping[str, LoadedExpert]:
    return service.runtime.engine.experts if service.runtime is not None else {}


def _thread_choice(service: ServiceState) -> ThreadChoice | None:
    return service.runtime.engine.encoder.thread_choice if service.runtime is not None else None


def serve(
    settings: Settings,
    *,
    encoder: Encoder | None = None,
    log_level: str = "info",
    after_start: AfterStart | None = None,
    building: Sequence[str] = (),
    jobs: JobServiceFactory | None = None,
) -> None:
    """Run the service with uvicorn until interrupted (``rr serve``, ``rr demo``).

    Every log handler, uvicorn's access log included, redacts the API keys and
    anything that looks like a credential (:mod:`app.api.log_redaction`): a key a
    client put in a URL must not end up in the logs. Each access line ends with
    the caller's key name (:mod:`app.api.access_log`). ``SIGHUP`` reloads
    RR_KEYS_FILE (uvicorn handles only SIGINT and SIGTERM).
    """
    import uvicorn

    secrets = [key.get_secret_value() for key in (settings.admin_key, settings.search_key) if key is not None]
    install_on_root(secrets)
    app = create_app(settings, encoder=encoder, after_start=after_start, building=building, jobs=jobs)
    install_reload_signal(app.state.keys)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        log_config=with_key_names(uvicorn_log_config(secrets)),
    )


def install_reload_signal(keys: KeyStore) -> None:
    """``kill -HUP <pid>`` reloads the key file. The handler only starts a thread: a signal handler runs between
    two bytecodes of the main thread (the event loop), which may hold the reload lock at that moment."""
    if keys.settings.keys_file is None or not hasattr(signal, "SIGHUP"):
        return

    def on_hangup(signum: int, frame: object) -> None:
        threading.Thread(target=keys.reload_logged, name="rr-keys-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hangup)
