"""The expert directory: fixed file names, creation, verification and atomic publishing.

Layout (names are the constants below)::

    <root>/<name>/
        manifest.json          the commit point: lists every file with its sha256
        adapter/               PEFT save_pretrained format
        pilots.npy             (p, dim) float32 pilot embeddings, base-encoder space
        index-000003/          the published index generation (written by ``index``)
        .work/                 builds in progress; never read by a server
        .lock                  taken by writers (index, pilots, publish), never by readers

Writers stage new files beside the published ones and then replace
``manifest.json`` atomically, so a reader sees the old expert or the new one,
never a mix. Older index generations are removed only after the publish.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from experts.adapters import (
    ADAPTER_CONFIG_FILE,
    DEFAULT_TARGET_MODULES,
    check_adapter_fits,
    new_lora_adapter,
    read_adapter_config,
)
from experts.atomic import atomic_save_npy, atomic_write_bytes, fsync_dir, fsync_tree
from experts.encoder import Encoder
from experts.errors import AdapterMismatchError, ChecksumMismatchError, ExpertDirError, MissingFileError
from experts.manifest import (
    AdapterInfo,
    BaseModelInfo,
    IndexSection,
    Manifest,
    PilotsSection,
    RetrievalSection,
    check_expert_name,
)

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
ADAPTER_DIR = "adapter"
PILOTS_FILE = "pilots.npy"
WORK_DIR = ".work"
LOCK_FILE = ".lock"
INDEX_DIR_PREFIX = "index-"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExpertDir:
    """One expert's directory on disk. Cheap to construct; reads nothing until asked."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR

    def work_path(self, purpose: str) -> Path:
        """A scratch directory for a build in progress (same filesystem, so renames are atomic)."""
        path = self.path / WORK_DIR / purpose
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ reading
    def read_manifest(self) -> Manifest:
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise MissingFileError(f"{self.path} is not an expert directory: {MANIFEST_FILE} is missing")
        try:
            return Manifest.model_validate_json(manifest_path.read_bytes())
        except ValidationError as exc:
            raise ExpertDirError(f"{manifest_path} is not a valid manifest: {exc}") from exc

    def verify(self, manifest: Manifest, *, checksums: bool = True) -> None:
        """Check that every file the manifest lists is present and (optionally) unchanged."""
        for relative, expected in sorted(manifest.files.items()):
            path = self.path / relative
            if not path.is_file():
                raise MissingFileError(f"expert {manifest.name!r}: {relative} is listed in the manifest but missing")
            if checksums and sha256_file(path) != expected:
                raise ChecksumMismatchError(
                    f"expert {manifest.name!r}: {relative} does not match its checksum in the manifest "
                    "(changed or corrupted since it was published)"
                )
        required = [ADAPTER_DIR + "/" + ADAPTER_CONFIG_FILE]
        if manifest.index is not None:
            required.append(manifest.index.directory)
        if manifest.pilots is not None:
            required.append(manifest.pilots.file)
        for relative in required:
            if not (self.path / relative).exists():
                raise MissingFileError(f"expert {manifest.name!r}: {relative} is missing")

    def read_pilots(self, manifest: Manifest) -> np.ndarray:
        if manifest.pilots is None:
            raise ExpertDirError(f"expert {manifest.name!r} has no pilots yet: build them with `rr pilots`")
        try:
            pilots = np.load(self.path / manifest.pilots.file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # missing, truncated, not an .npy file
            raise ExpertDirError(f"expert {manifest.name!r}: cannot read {manifest.pilots.file}: {exc}") from exc
        if pilots.ndim != 2 or pilots.shape[1] != manifest.base_model.dim:
            raise ExpertDirError(
                f"expert {manifest.name!r}: pilots have shape {pilots.shape}, expected (p, {manifest.base_model.dim})"
            )
        return pilots.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ writing
    def new_index_path(self) -> Path:
        """Where the next index generation goes (does not exist yet)."""
        generation = self.read_manifest().version + 1
        while (self.path / f"{INDEX_DIR_PREFIX}{generation:06d}").exists():
            generation += 1
        return self.path / f"{INDEX_DIR_PREFIX}{generation:06d}"

    def stage_pilots(self, pilots: np.ndarray) -> str:
        """Write pilots beside the published ones; returns the relative name to publish."""
        name = f"pilots-{hashlib.sha256(np.ascontiguousarray(pilots).tobytes()).hexdigest()[:12]}.npy"
        atomic_save_npy(self.path / name, pilots.astype(np.float32))
        return name

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers of this expert (an flock on ``.lock``); readers never take it."""
        with open(self.path / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def publish(
        self,
        *,
        index: IndexSection | None = None,
        pilots: PilotsSection | None = None,
        retrieval: RetrievalSection | None = None,
        expect_index: str | None = None,
    ) -> Manifest:
        """Commit a new version: re-read the manifest, apply the changes, checksum, replace atomically.

        Reading and writing happen under the writers' lock, so an index build
        and a pilots build finishing together both land. ``expect_index``: only
        publish if the manifest still names this index generation (a live
        merge folds writes into the generation it started from; if another
        build replaced that generation meanwhile, publishing the merge would
        silently undo that build).
        """
        changes: dict[str, object] = {}
        if index is not None:
            changes["index"] = index
        if pilots is not None:
            changes["pilots"] = pilots
        if retrieval is not None:
            changes["retrieval"] = retrieval
        with self.locked():
            previous = self.read_manifest()
            current = None if previous.index is None else previous.index.directory
            if expect_index is not None and current != expect_index:
                raise ExpertDirError(
                    f"expert {previous.name!r}: its index is now {current!r}, not {expect_index!r}; "
                    "another build published a new generation meanwhile, so this one was not published"
                )
            new = previous.next_version(**changes)
            new = new.model_copy(update={"files": self._checksums(new)})
            atomic_write_bytes(self.path / MANIFEST_FILE, new.model_dump_json(indent=2).encode())
            self._remove_stale(new, previous=previous)
        logger.info("published expert %r version %d", new.name, new.version)
        return new

    def _checksums(self, manifest: Manifest) -> dict[str, str]:
        roots = [ADAPTER_DIR]
        if manifest.index is not None:
            roots.append(manifest.index.directory)
        if manifest.pilots is not None:
            roots.append(manifest.pilots.file)
        files: dict[str, str] = {}
        for root in roots:
            path = self.path / root
            candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for candidate in candidates:
                files[candidate.relative_to(self.path).as_posix()] = sha256_file(candidate)
        return files

    def _remove_stale(self, current: Manifest, *, previous: Manifest) -> None:
        # Keep the previous generation: a reader that loaded the old manifest a
        # moment ago may still be opening its files.
        keep = {m.index.directory for m in (current, previous) if m.index is not None}
        keep |= {m.pilots.file for m in (current, previous) if m.pilots is not None}
        for entry in self.path.iterdir():
            stale_index = entry.name.startswith(INDEX_DIR_PREFIX) and entry.is_dir()
            stale_pilots = entry.name.startswith("pilots-") and entry.suffix == ".npy"
            if (stale_index or stale_pilots) and entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def check_base_matches(manifest: Manifest, encoder: Encoder) -> None:
    """Refuse an expert built on another base model, naming both."""
    base = manifest.base_model
    if base.fingerprint != encoder.fingerprint or base.dim != encoder.dim:
        raise AdapterMismatchError(
            f"expert {manifest.name!r} was built for base model {base.id!r} (dim {base.dim}, "
            f"fingerprint {base.fingerprint[:12]}) but the base encoder is {encoder.model_id!r} "
            f"(dim {encoder.dim}, fingerprint {encoder.fingerprint[:12]})"
        )


def create_expert(
    root: Path,
    name: str,
    *,
    encoder: Encoder,
    adapter_from: Path | None = None,
    rank: int = 8,
    alpha: float = 32,
    dropout: float = 0.1,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    description: str = "",
) -> ExpertDir:
    """Create ``root/name`` with an adapter (copied from ``adapter_from``, or new and untrained).

    The directory appears only when complete: it is assembled under a hidden
    temporary name and renamed into place.
    """
    check_expert_name(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists():
        raise ExpertDirError(f"expert {name!r} already exists at {target}")
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    try:
        adapter_dir = staging / ADAPTER_DIR
        if adapter_from is not None:
            check_adapter_fits(Path(adapter_from), encoder.base_module, base_id=encoder.model_id)
            shutil.copytree(adapter_from, adapter_dir)
            config = read_adapter_config(adapter_dir)
            trained = True
        else:
            config = new_lora_adapter(
                encoder.config,
                adapter_dir,
                rank=rank,
                alpha=alpha,
                dropout=dropout,
                target_modules=target_modules,
                base_id=encoder.model_id,
            )
            trained = False
        manifest = Manifest(
            name=name,
            description=description,
            base_model=BaseModelInfo(id=encoder.model_id, fingerprint=encoder.fingerprint, dim=encoder.dim),
            pooling=encoder.pooling,
            max_length=encoder.max_length,
            adapter=AdapterInfo(
                rank=int(config["r"]),
                alpha=float(config.get("lora_alpha", config["r"])),
                dropout=float(config.get("lora_dropout", 0.0)),
                target_modules=_target_list(config.get("target_modules")),
                trained=trained,
            ),
        )
        manifest = manifest.model_copy(update={"files": ExpertDir(staging)._checksums(manifest)})
        atomic_write_bytes(staging / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
        fsync_tree(staging)
        os.rename(staging, target)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("created expert %r at %s", name, target)
    return ExpertDir(target)


def _target_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # PEFT allows a regex string
        return (value,)
    if isinstance(value, (list, tuple, set)):
        return tuple(sorted(str(item) for item in value))
    return ()


def list_expert_dirs(root: Path) -> list[ExpertDir]:
    """Every directory under ``root`` that holds a manifest, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [ExpertDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / MANIFEST_FILE).is_file()]
