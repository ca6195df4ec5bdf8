"""Opening a live collection: its log bound to the published generation, a killed merge finished, the writes replayed.

The log must belong to the generation it is opened over: it does when it was
written over that generation itself, or when that generation is a merge of
this very log (then the writes it already contains are dropped from the log:
the merge was killed before its truncation). A log with writes over another
generation is refused; an empty one is simply bound to the generation. Apart
from :mod:`index.live.live_collection` (the write path and merges) because it
runs once, before there is a collection to write to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from index.errors import IndexFileError
from index.live.log import LiveLog
from index.live.merge import read_marker
from index.live.view import DeltaSegment, LiveView
from index.store.collection import Collection

__all__ = ["main_fingerprint", "replay"]

logger = logging.getLogger(__name__)


def main_fingerprint(collection: Collection) -> str:
    """Identity of a published generation: its recorded checksums and creation time."""
    info = collection.info
    payload = json.dumps(
        {"checksums": info.checksums, "created_at": info.created_at, "count": info.count}, sort_keys=True
    )
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def replay(main: Collection, log_path: Path) -> tuple[LiveLog, LiveView, str, int]:
    """The log at ``log_path`` (created when missing) put over ``main`` and replayed.

    Returns the open log, the first view, the log's id and the next free row
    id. A log with writes over another generation is an :class:`IndexFileError`.
    """
    log = LiveLog.open(Path(log_path), dim=main.info.dim)
    try:
        contents = log.read()
        fingerprint = main_fingerprint(main)
        main_ids = main.docstore.all_row_ids()
        high = int(main_ids[-1]) + 1 if len(main_ids) else 0
        marker = read_marker(main.directory)
        if contents.main != fingerprint:
            pending = len(contents.entries) + len(contents.tombstones)
            if marker is not None and marker.log_id == contents.log_id:
                logger.info(
                    "%s: %s already holds writes up to %d; truncating the log", log.path, main.directory, marker.seq
                )
                log.truncate(marker.seq, main=fingerprint, next_row_id=max(contents.next_row_id, high))
            elif pending == 0:
                log.bind(main=fingerprint, next_row_id=max(contents.next_row_id, high))
            else:
                raise IndexFileError(
                    f"live log {str(log.path)!r} holds {pending} unmerged write(s) over another index generation "
                    f"than {str(main.directory)!r}; open it over the generation it was written for, or remove "
                    "the log to drop those writes"
                )
            contents = log.read()
        entries = {entry.row_id: entry for entry in contents.entries}
        delta = DeltaSegment.build(entries, dim=main.info.dim, lexical=main.info.lexical)
        view = LiveView.build(main, main_ids, delta, contents.tombstones, contents.seq, log=log)
        top = max([contents.next_row_id, high, *(r + 1 for r in entries)])
    except BaseException:
        log.close()
        raise
    logger.info(
        "%s: replayed %d document(s) and %d tombstone(s) up to write %d",
        log.path,
        len(entries),
        len(view.tombstones),
        view.seq,
    )
    return log, view, contents.log_id, top
