"""The service: everything that composes ``experts``, ``router`` and ``index`` into routed search.

The layer map (imports point down and never up; ``tests/test_architecture.py`` holds it)::

    cli/         `rr`: the entry point; each command parses options and calls one function below
      |
    api/         `rr serve`: app factory and lifespan, routes, schemas, auth, limits, metrics,
    ray_serve/   the micro-batcher, the console;  the same service as Ray Serve deployments
      |
    offline/     jobs run by `rr`: build, train, evaluate, tune, demo, document files
      |          (never imported by api/ or ray_serve/: `rr serve` hands api/ the runner of
      |          /admin/jobs, which api/ reaches through the JobService protocol of schemas_jobs)
    publishing/  what is served, changed at run time: publisher, registry, archives, document writes
      |
    engine/      the search runtime: engine, batch stages, snapshots, retrieval, loading, live documents
      |
    settings.py, errors.py   read once / raised everywhere

``engine/`` imports no web framework, Ray, Typer or Prometheus; only ``__main__`` imports ``cli``.
"""
