"""``rr documents upsert|delete|get|merge``: an expert's documents from the command line.

Registered on ``rr`` as a group. Without ``--url`` the command writes the
expert directory itself (refused while a server writes it: the message says
which process); with ``--url http://host:port`` it goes through that server's
document API with the admin key (``--admin-key`` or ``RR_ADMIN_KEY``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

documents_cli = typer.Typer(
    name="documents",
    help="Upsert, delete, read and merge an expert's documents (JSONL in, JSON out).",
    no_args_is_help=True,
)

Expert = Annotated[str, typer.Option("--expert", "-e", help="The expert whose documents these are.")]
Url = Annotated[
    str | None, typer.Option(help="A running service (http://host:port): send the operation to it instead.")
]
AdminKey = Annotated[str | None, typer.Option(help="Admin key for --url (default: RR_ADMIN_KEY).", show_default=False)]


def _target(expert: str, url: str | None, admin_key: str | None, *, write: bool = True):
    from app.cli.commands import state
    from app.offline.document_files import LocalDocuments, RemoteDocuments

    if url is not None:
        settings_key = state.settings.admin_key
        key = admin_key or (settings_key.get_secret_value() if settings_key is not None else None)
        return RemoteDocuments(url, expert, admin_key=key)
    return LocalDocuments(state.settings, state.encoder(), expert, state.expert_dir(expert), write=write)


def _print(result: dict) -> None:
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@documents_cli.command("upsert")
def upsert_command(
    corpus: Annotated[
        Path, typer.Argument(help="JSONL (BEIR corpus lines: _id, title, text, other fields = metadata).")
    ],
    expert: Expert,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per write (each all or nothing).")] = 256,
    url: Url = None,
    admin_key: AdminKey = None,
) -> None:
    """Insert or replace every document of a JSONL file (checked whole before the first write)."""
    from app.offline.document_files import upsert_jsonl

    target = _target(expert, url, admin_key)
    try:
        _print(upsert_jsonl(target, corpus, batch_size=batch_size))
    finally:
        target.close()


@documents_cli.command("delete")
def delete_command(
    ids: Annotated[list[str] | None, typer.Argument(help="Document ids.")] = None,
    expert: Expert = ...,  # type: ignore[assignment]
    ids_file: Annotated[Path | None, typer.Option(help="A file with one id per line.")] = None,
    url: Url = None,
    admin_key: AdminKey = None,
) -> None:
    """Delete documents by id (unknown ids are listed as missing)."""
    from app.offline.document_files import delete_ids

    wanted = list(ids or [])
    if ids_file is not None:
        wanted += [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    if not wanted:
        raise typer.BadParameter("give document ids, or --ids-file")
    target = _target(expert, url, admin_key)
    try:
        _print(delete_ids(target, wanted))
    finally:
        target.close()


@documents_cli.command("get")
def get_command(
    doc_id: Annotated[str, typer.Argument(help="Document id.")],
    expert: Expert,
    url: Url = None,
    admin_key: AdminKey = None,
) -> None:
    """Print one document as searches see it now."""
    target = _target(expert, url, admin_key, write=False)
    try:
        _print(target.get(doc_id))
    finally:
        target.close()


@documents_cli.command("merge")
def merge_command(expert: Expert, url: Url = None, admin_key: AdminKey = None) -> None:
    """Fold the live writes into a new index generation now."""
    target = _target(expert, url, admin_key)
    try:
        _print(target.merge())
    finally:
        target.close()
