"""The search runtime: engine, batch stages, corpus votes, snapshots, retrieval, expert loading, live documents (no web framework)."""
