"""``rr documents``: upsert a JSONL file, delete ids, read one, merge; on the expert directory or through a server.

Two targets with one interface:

- :class:`LocalDocuments` opens the expert directory itself, taking its live
  log's writer lock (refused, with the holder's pid, while a server writes
  it), and uses the service's own :class:`~app.publishing.document_writes.DocumentWriter`.
- :class:`RemoteDocuments` sends the same operations to a running service
  (``--url``), with the admin key, in batches under its request limits.

A file is read through once to check every line (and that no id repeats)
before anything is written, so a bad line 9,000 does not leave 8,999
documents written; each batch after that is all or nothing.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from app.engine.engine import SearchEngine
from app.engine.loading import load_expert
from app.offline.service_client import RemoteError, call_service
from app.publishing.document_writes import DocumentWriter
from app.settings import Settings
from experts import Encoder, ExpertDir
from index import CorpusError, CorpusProblem, Document, read_corpus

__all__ = ["LocalDocuments", "RemoteDocuments", "RemoteError", "check_jsonl", "delete_ids", "upsert_jsonl"]


class DocumentTarget(Protocol):
    def upsert(self, docs: Sequence[Document]) -> dict[str, Any]: ...
    def delete(self, ids: Sequence[str]) -> dict[str, Any]: ...
    def get(self, doc_id: str) -> dict[str, Any]: ...
    def merge(self) -> dict[str, Any]: ...


def check_jsonl(path: Path) -> int:
    """Count the documents of a BEIR-style JSONL file; raise :class:`CorpusError` at its first bad line or repeated id."""
    seen: dict[str, int] = {}
    for line, item in read_corpus(Path(path)):
        if isinstance(item, CorpusProblem):
            raise CorpusError(f"{path}:{line}: {item.reason}; nothing was written")
        if not item.passage().strip():
            raise CorpusError(f"{path}:{line}: document {item.id!r} has neither title nor text; nothing was written")
        if item.id in seen:
            raise CorpusError(
                f"{path}:{line}: document id {item.id!r} already appears on line {seen[item.id]}; nothing was written"
            )
        seen[item.id] = line
    return len(seen)


def _batches(path: Path, size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for _, item in read_corpus(Path(path)):
        batch.append(item)  # type: ignore[arg-type]  # checked by check_jsonl
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def upsert_jsonl(target: DocumentTarget, path: Path, *, batch_size: int = 256, progress: bool = True) -> dict[str, Any]:
    """Upsert every document of ``path`` in batches; returns the totals and the last write's answer."""
    total = check_jsonl(path)
    created = replaced = 0
    last: dict[str, Any] = {}
    with tqdm(total=total, unit="doc", desc="upserting", disable=not progress) as bar:
        for batch in _batches(path, batch_size):
            last = target.upsert(batch)
            created += last["created"]
            replaced += last["replaced"]
            bar.update(len(batch))
    return {
        "upserted": total,
        "created": created,
        "replaced": replaced,
        **{k: last.get(k) for k in ("seq", "documents", "merging")},
    }


def delete_ids(target: DocumentTarget, ids: Sequence[str], *, batch_size: int = 1000) -> dict[str, Any]:
    deleted: list[str] = []
    missing: list[str] = []
    last: dict[str, Any] = {}
    for start in range(0, len(ids), batch_size):
        last = target.delete(ids[start : start + batch_size])
        deleted += last["deleted"]
        missing += last["missing"]
    return {"deleted": deleted, "missing": missing, **{k: last.get(k) for k in ("seq", "documents", "merging")}}


class LocalDocuments:
    """One expert directory, opened for writing by this process (the CLI without a server)."""

    def __init__(
        self, settings: Settings, encoder: Encoder, name: str, directory: ExpertDir, *, write: bool = True
    ) -> None:
        self.name = name
        self._encoder = encoder
        self._engine = SearchEngine(encoder)
        self._expert = load_expert(
            directory,
            encoder,
            verify_checksums=settings.verify_checksums,
            write=write,
            merge_policy=settings.merge_policy(),
        )
        self._engine.add(self._expert)
        self._writer = DocumentWriter(self._engine)
        if write:
            self._expert.documents.check_writable()  # a server holds the log: say so before reading the file

    def upsert(self, docs: Sequence[Document]) -> dict[str, Any]:
        written = self._writer.upsert(self.name, docs)
        report = written.report
        return {
            "seq": report.seq,
            "created": report.created,
            "replaced": report.replaced,
            "documents": written.documents,
            "merging": written.merging,
        }

    def delete(self, ids: Sequence[str]) -> dict[str, Any]:
        written = self._writer.delete(self.name, ids)
        report = written.report
        return {
            "seq": report.seq,
            "deleted": report.deleted,
            "missing": report.missing,
            "documents": written.documents,
            "merging": written.merging,
        }

    def get(self, doc_id: str) -> dict[str, Any]:
        document = self._writer.get(self.name, doc_id)
        return {
            "expert": self.name,
            "id": document.id,
            "title": document.title,
            "text": document.text,
            "metadata": document.metadata,
        }

    def merge(self) -> dict[str, Any]:
        report, expert = self._writer.merge(self.name)
        return {
            "merged": report is not None,
            "directory": None if report is None else report.directory.name,
            "documents": len(expert.documents),
            "version": expert.manifest.version,
        }

    def close(self) -> None:
        """Finish a merge the writes started (a CLI exiting would drop it), then unload."""
        current = self._engine.experts.get(self.name)
        if current is not None:
            current.documents.wait_merge()
        self._engine.remove(self.name).wait()  # unloads it: adapter, files, writer lock


class RemoteDocuments:
    """The same operations through a running service's document API."""

    def __init__(self, url: str, name: str, *, admin_key: str | None, timeout: float = 600.0) -> None:
        self.base = url.rstrip("/")
        self.name = name
        self._key = admin_key
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        return call_service(self.base, method, path, admin_key=self._key, body=data, timeout=self._timeout)

    def _expert_path(self) -> str:
        return f"/admin/experts/{urllib.parse.quote(self.name, safe='')}"

    def upsert(self, docs: Sequence[Document]) -> dict[str, Any]:
        payload = [{"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata} for d in docs]
        return self._call("PUT", self._expert_path() + "/documents", {"documents": payload})

    def delete(self, ids: Sequence[str]) -> dict[str, Any]:
        return self._call("DELETE", self._expert_path() + "/documents", {"ids": list(ids)})

    def get(self, doc_id: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(doc_id, safe="")
        return self._call("GET", f"/experts/{urllib.parse.quote(self.name, safe='')}/documents/{quoted}")

    def merge(self) -> dict[str, Any]:
        return self._call("POST", self._expert_path() + "/merge")

    def close(self) -> None:
        pass
