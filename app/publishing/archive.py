"""Expert archives (tar or tar.gz): packing one for upload, and unpacking an upload safely into a staging directory.

Only regular files and directories are accepted; an absolute name, a ``..``
component, a link, a device or a duplicate name refuses the whole archive, as
does more than ``max_bytes`` of unpacked content or ``max_members`` entries (a
compression bomb stops at the limit, it is not unpacked first). Files are
written with exclusive creation under the staging root, so nothing outside it
can be touched.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from app.errors import is_disk_full
from experts import MANIFEST_FILE

_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The upload is not an acceptable expert archive; the message says which entry and why."""


class ArchiveTooLargeError(ArchiveError):
    """The archive unpacks to more than the configured limit."""


def _safe_parts(name: str) -> tuple[str, ...]:
    if "\x00" in name or "\\" in name:
        raise ArchiveError(f"entry {name!r}: the name holds a NUL or a backslash")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ArchiveError(f"entry {name!r}: absolute paths are not allowed")
    parts = tuple(part for part in path.parts if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"entry {name!r}: '..' is not allowed in a path")
    return parts


def extract_archive(archive: Path, staging: Path, *, max_bytes: int, max_members: int = 100_000) -> None:
    """Unpack ``archive`` into the existing, empty directory ``staging``; raises and leaves partial files on error."""
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"the upload is not a tar or tar.gz archive: {exc}") from exc
    total = 0
    with tar:
        try:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise ArchiveError(f"the archive has more than {max_members} entries")
                parts = _safe_parts(member.name)
                if not parts:
                    continue  # "." itself
                target = staging.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise ArchiveError(f"entry {member.name!r} is a {kind}: only files and directories are allowed")
                total += member.size
                if total > max_bytes:
                    raise ArchiveTooLargeError(f"the archive unpacks to more than the limit of {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise ArchiveError(f"entry {member.name!r} has no data")
                try:
                    with source, open(target, "xb") as sink:
                        shutil.copyfileobj(source, sink, _CHUNK)
                except FileExistsError as exc:
                    raise ArchiveError(f"entry {member.name!r} appears twice in the archive") from exc
        except (tarfile.TarError, EOFError, OSError) as exc:  # damaged, truncated, or a file where a dir goes
            if is_disk_full(exc):
                raise  # the server's disk is full, the archive may be fine: not the uploader's fault (507)
            raise ArchiveError(f"the archive cannot be unpacked: {exc}") from exc


def find_expert_root(staging: Path) -> Path:
    """The unpacked expert directory: ``staging`` itself, or its only top-level directory."""
    if (staging / MANIFEST_FILE).is_file():
        return staging
    entries = list(staging.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_FILE).is_file():
        return entries[0]
    raise ArchiveError(
        f"the archive holds no expert: expected {MANIFEST_FILE} at its top level or inside its only top-level "
        f"directory, found {sorted(entry.name for entry in entries)[:10]}"
    )


def pack_expert(directory: Path, archive: Path) -> Path:
    """Write ``directory`` as a tar.gz whose only top-level entry is the expert's directory (what ``POST
    /admin/experts`` unpacks). Only regular files and directories go in; hidden work files (locks, ``.work``) stay out.
    """
    directory = Path(directory)

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        hidden = any(part.startswith(".") for part in PurePosixPath(member.name).parts[1:])
        return member if (member.isreg() or member.isdir()) and not hidden else None

    with tarfile.open(archive, mode="w:gz", compresslevel=1) as tar:  # vectors barely compress: favour speed
        tar.add(directory, arcname=directory.name, filter=keep)
    return archive
