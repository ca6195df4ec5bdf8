"""What a live collection's operations return: upsert, delete and merge reports, and its counts.

Plain frozen records, apart from :mod:`index.live.live_collection` so that a
caller (the service's document writes) can name them without the collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeleteReport", "LiveStats", "MergeReport", "UpsertReport"]


@dataclass(frozen=True)
class UpsertReport:
    seq: int  # the write's sequence number in the log
    row_ids: list[int]  # the new row of each document, in input order
    created: int  # documents that did not exist
    replaced: int  # documents that replaced a live one


@dataclass(frozen=True)
class DeleteReport:
    seq: int  # the write's sequence number (unchanged when nothing was deleted)
    deleted: list[str]
    missing: list[str]  # ids that were not (or no longer) in the collection


@dataclass(frozen=True)
class MergeReport:
    directory: Path  # the new generation
    seq: int  # writes up to this one are in it
    documents: int
    from_delta: int
    tombstones_applied: int


@dataclass(frozen=True)
class LiveStats:
    documents: int  # live documents
    main_documents: int  # rows of the main segment, tombstoned ones included
    delta_documents: int
    tombstones: int  # tombstoned rows of the main segment
    seq: int
