"""The batch indexing job: checkpoints, vector shards, assembly of a generation, its Ray Data engine."""
