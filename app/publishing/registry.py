"""The registry file: which experts the service publishes, so that a restart serves the same set.

``<data root>/registry.json``, replaced atomically (temp file, fsync, rename)
on every publish and unpublish::

    {"format_version": 1, "experts": [{"name": "cacm", "path": "cacm", "version": 3, "published_at": "...",
                                        "live_seq": 0, "versions": [{"version": 2, "path": ".versions/cacm/v2/cacm",
                                                                     "published_at": "..."}]}]}

Paths are relative to the data root (every published expert lives under it),
so the whole root can be moved. A missing file means "never written": the
service then publishes every expert directory found under the root and writes
the file, so a fresh root needs no set-up. An unreadable file is an error,
never silently replaced.

``versions`` lists the older versions of an expert kept on disk for a
rollback, most recently served first (see :mod:`app.publishing.versions`);
``live_seq`` is the expert's live-log sequence number when the serving version
began to serve; ``gate`` (on an entry and on a kept version) the quality gate
that version passed when a replace published it (:mod:`app.publishing.gate`).
All three were added later with defaults: a file without them loads,
and an older release reads a newer file (it ignores unknown fields).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experts import atomic_write_bytes, check_expert_name

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
REGISTRY_FORMAT = 1


class RegistryError(ValueError):
    """The registry file exists but cannot be read as a registry."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class GateFigures(BaseModel):
    """One version's scores on a quality gate's query set."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int = Field(ge=0, description="Its manifest version.")
    ndcg_at_10: float = Field(description="Mean nDCG@10 over the set's queries (a query without hits counts 0).")
    recall_at_100: float = Field(description="Mean Recall@100 over the set's queries.")


class GateRecord(BaseModel):
    """The quality gate a replace went through: both versions scored on one query set (see app.publishing.gate)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    set: str = Field(description="The query set: 'pseudo' or 'QUERIES:QRELS' (paths under the data root).")
    queries: int = Field(ge=0, description="Queries scored.")
    mode: str = Field(description="How both versions were searched: 'hybrid' as served, or 'dense' without BM25.")
    margin: float = Field(ge=0, description="How much lower the candidate's nDCG@10 may be than the serving one's.")
    candidate: GateFigures
    serving: GateFigures | None = Field(None, description="None when no version was serving to compare with.")
    passed: bool
    measured_at: str = Field(default_factory=_now)


class KeptVersion(BaseModel):
    """An older version of an expert, kept on disk so that it can be rolled back to."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int = Field(ge=0, description="Its manifest version.")
    path: str = Field(description="Its expert directory, relative to the data root.")
    published_at: str = Field(default_factory=_now, description="When it began serving.")
    gate: GateRecord | None = Field(None, description="The quality gate it passed when it was published, if any.")


class RegistryEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    path: str = Field(description="Expert directory, relative to the data root.")
    version: int = Field(0, ge=0, description="Manifest version when published (informational).")
    published_at: str = Field(default_factory=_now)
    live_seq: int = Field(0, ge=0, description="The live log's sequence number when this version began serving.")
    versions: tuple[KeptVersion, ...] = Field((), description="Older versions kept, most recently served first.")
    gate: GateRecord | None = Field(None, description="The quality gate this version passed when published, if any.")

    def kept(self) -> KeptVersion:
        """This (serving) version as a kept one, for when another replaces it."""
        return KeptVersion(version=self.version, path=self.path, published_at=self.published_at, gate=self.gate)


class _RegistryDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format_version: int = REGISTRY_FORMAT
    experts: list[RegistryEntry] = Field(default_factory=list)


class RegistryFile:
    """Read and atomically rewrite ``registry.json`` under a data root.

    >>> registry = RegistryFile(Path("data/experts"))
    >>> registry.write([RegistryEntry(name="cacm", path="cacm", version=3)])
    >>> [entry.name for entry in registry.read()]
    ['cacm']
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / REGISTRY_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> list[RegistryEntry] | None:
        """The published entries, or None when the file has never been written."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = _RegistryDocument.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise RegistryError(f"registry file {self.path} is not valid: {exc}") from exc
        if document.format_version > REGISTRY_FORMAT:
            raise RegistryError(
                f"registry file {self.path} has format {document.format_version}; this release reads {REGISTRY_FORMAT}"
            )
        names = [entry.name for entry in document.experts]
        for name in names:
            try:
                check_expert_name(name)
            except ValueError as exc:
                raise RegistryError(f"registry file {self.path}: {exc}") from exc
        if len(set(names)) != len(names):
            raise RegistryError(f"registry file {self.path} lists an expert twice: {sorted(names)}")
        return list(document.experts)

    def write(self, entries: list[RegistryEntry]) -> None:
        """Replace the file with ``entries`` (sorted by name); readers see the old or the new file."""
        document = _RegistryDocument(experts=sorted(entries, key=lambda entry: entry.name))
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, document.model_dump_json(indent=2).encode() + b"\n")
        logger.info("registry %s: %s", self.path, [entry.name for entry in document.experts])

    def include(self, names: list[str]) -> list[str]:
        """Add the experts ``names`` (directories of that name under the root) to an existing file; returns those added.

        Writes nothing when the file has never been written: the service then publishes every expert under
        the root on its first start, these included.
        """
        entries = self.read()
        if entries is None:
            return []
        published = {entry.name for entry in entries}
        added = [name for name in names if name not in published]
        if added:
            self.write([*entries, *(RegistryEntry(name=name, path=name) for name in added)])
        return added

    def discard_temporary_files(self) -> list[Path]:
        """Remove temporary files of a rewrite that a crash interrupted (the file itself is intact); returns them."""
        leftovers = sorted(self.root.glob(f".{REGISTRY_FILE}.*.tmp"))  # atomic_write_bytes' temporary names
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return leftovers

    def resolve(self, entry: RegistryEntry) -> Path:
        """The absolute directory of an entry."""
        return self.root / entry.path
