"""``rr serve``: the FastAPI app factory and lifespan, routes, schemas, auth, limits, metrics, micro-batcher, console."""
