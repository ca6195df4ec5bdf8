"""Live documents: the write-ahead log, the delta and tombstones, views of one moment, merges, the writer lock."""
