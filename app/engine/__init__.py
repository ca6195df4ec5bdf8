"""The search runtime: engine, batch stages, snapshots, retrieval, expert loading, live documents (no web framework)."""
