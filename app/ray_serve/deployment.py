"""Serving on Ray Serve: routed search where each replica holds only the experts it is asked for.

Two deployments (the optional ``[ray]`` extra):

- ``RoutedSearch``, the HTTP ingress (:mod:`app.ray_serve.routes`, :mod:`app.ray_serve.ingress`):
  ``rr serve``'s auth, body and query limits, request/response schemas, error
  bodies and metrics. It embeds the queries with the base encoder, takes the
  corpus votes from the searchers, routes on the experts' pilots plus those
  votes (``rr serve``'s decisions), then sends each expert's queries to
  ``ExpertSearcher`` with the expert's name as Serve's multiplexed model id.
  It also publishes and unpublishes experts (``/admin/experts``) by editing
  the registry file, and answers ``/readyz`` and ``/metrics``.
- ``ExpertSearcher`` (:mod:`app.ray_serve.searcher`): replicas that load experts with
  ``@serve.multiplexed``. Serve sends a request for expert X to a replica that
  already holds X when one exists; each replica keeps at most ``max_experts``
  loaded and unloads the least recently used. A replica searches with the
  same :class:`~app.engine.engine.SearchEngine` as ``rr serve``, so the hits are the
  single-process service's.

The registry file under ``RR_DATA_DIR`` (shared by every node) is the
published set: every replica follows it (:mod:`app.ray_serve.published`).

Run it with ``serve run app.ray_serve:app_builder max_experts=8 searchers=4``
(settings from the ``RR_*`` environment), or build it in Python with
:func:`build_app` and ``serve.run``.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from app.ray_serve.ingress import Ingress
from app.ray_serve.published import published_experts
from app.ray_serve.routes import create_ingress_app
from app.ray_serve.searcher import expert_searcher_class
from app.settings import Settings

__all__ = ["RoutedSearch", "app_builder", "build_app", "published_experts"]


@serve.ingress()
class RoutedSearch:
    """The ingress deployment: one :class:`~app.ray_serve.ingress.Ingress` per replica, its app built on the replica."""

    def __init__(self, searcher: DeploymentHandle, settings: Settings) -> None:
        self.ingress = Ingress(settings, searcher)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built here, after the constructor, rather than at import: the limits and keys are the settings'.
        return create_ingress_app(self.ingress)


def build_app(
    settings: Settings,
    *,
    max_experts: int = 4,
    searchers: int = 1,
    searcher_cpus: float = 1.0,
    searcher_gpus: float = 0.0,
    ingress_replicas: int = 1,
    ingress_cpus: float = 1.0,
    registry_poll_s: float = 2.0,
) -> serve.Application:
    """The Serve application: ``ingress_replicas`` routers in front of ``searchers`` expert replicas.

    Size ``max_experts`` to what one replica's memory holds (an expert costs its
    adapter, a few MB, plus its index: ~1.6 kB per document for a flat MiniLM
    index, plus the BM25 index and the SQLite pages it touches), and
    ``searchers`` to the experts x traffic you serve. With corpus votes on
    (``RR_ROUTER_EVIDENCE``, the default) every routed query asks every routable
    expert, so ``searchers * max_experts`` must hold them all, or replicas
    load and unload experts on every query. ``registry_poll_s``: how often a
    searcher replica unloads experts that were unpublished.
    """
    if max_experts < 1 or searchers < 1 or ingress_replicas < 1:
        raise ValueError(
            f"max_experts, searchers and ingress_replicas must be >= 1, got {max_experts}, {searchers}, {ingress_replicas}"
        )
    if registry_poll_s <= 0:
        raise ValueError(f"registry_poll_s must be > 0, got {registry_poll_s}")
    # Ray annotates serve.deployment() as returning the decorator even when it is given the class (it then
    # returns the Deployment), hence the two ignores on .bind below.
    searcher = serve.deployment(
        expert_searcher_class(max_experts, registry_poll_s),
        name="ExpertSearcher",
        num_replicas=searchers,
        ray_actor_options={"num_cpus": searcher_cpus, "num_gpus": searcher_gpus},
        # A routed request with corpus votes makes one call per expert, all at once: let a replica take
        # the calls for every expert it holds, twice over (Serve's default is 5).
        max_ongoing_requests=max(5, 2 * max_experts),
    ).bind(settings)  # type: ignore[attr-defined]
    ingress = serve.deployment(
        RoutedSearch, name="RoutedSearch", num_replicas=ingress_replicas, ray_actor_options={"num_cpus": ingress_cpus}
    )
    return ingress.bind(searcher, settings)  # type: ignore[attr-defined]


def app_builder(args: dict[str, str]) -> serve.Application:
    """For ``serve run app.ray_serve:app_builder max_experts=8 searchers=4 searcher_cpus=2``; settings from ``RR_*``."""
    known = {
        "max_experts": int,
        "searchers": int,
        "searcher_cpus": float,
        "searcher_gpus": float,
        "ingress_replicas": int,
        "ingress_cpus": float,
        "registry_poll_s": float,
    }
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"Unknown argument(s) {unknown}. Valid arguments are: {', '.join(sorted(known))}")
    return build_app(Settings(), **{key: known[key](value) for key, value in args.items()})
