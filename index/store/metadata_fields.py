"""The metadata fields a store holds, and a filter checked against them.

A docstore records what it holds under each top-level metadata key
(:class:`FieldInfo`): :func:`scan_fields` finds them in one pass over its
documents, :func:`record_fields` writes them into the ``metadata_fields``
table with an expression index on the most common ones (at export: a
published file is opened read-only, so whatever serves filters must already
be in it), and :func:`read_fields` reads them back. :func:`check_fields`
refuses a filter that names a field no document has, or compares one that
never holds a comparable value, before any SQL runs. Apart from the language
(:mod:`index.store.filters`) because it needs a store's fields, which parsing
does not, and apart from :mod:`index.store.docstore` because it is one question
(what fields are there?) asked at export, on open and by every filter.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from index.errors import InvalidFilterError, UnknownFieldError
from index.store.filter_sql import json_path
from index.store.filter_tree import FilterExpr, Range, leaves
from index.store.filters import FIELD_PATTERN

__all__ = ["MAX_INDEXED_FIELDS", "FieldInfo", "check_fields", "read_fields", "record_fields", "scan_fields"]

#: Metadata fields that get an expression index when a docstore is exported (the most common first).
MAX_INDEXED_FIELDS = 32
_FIELDS_TABLE = "metadata_fields"
_INDEX_PREFIX = "metadata:"
_SCALAR_TYPES = frozenset({"text", "integer", "real", "true", "false"})


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """What a docstore records about one metadata field: the JSON types seen, in how many documents, indexed?

    ``types`` uses SQLite's ``json_type`` names: ``text``, ``integer``, ``real``,
    ``true``, ``false``, ``null``, ``array``, ``object``.
    """

    name: str
    types: frozenset[str]
    documents: int
    indexed: bool = False


# ---------------------------------------------------------------------- a docstore's fields
def scan_fields(conn: sqlite3.Connection) -> dict[str, FieldInfo]:
    """Every top-level metadata key with the JSON types it holds and its document count: one pass over the table."""
    counts: dict[str, tuple[set[str], int]] = {}
    rows = conn.execute(
        "SELECT j.key, j.type, count(*) FROM documents, json_each(documents.metadata) AS j GROUP BY j.key, j.type"
    )
    for key, kind, n in rows:
        types, total = counts.get(key, (set(), 0))
        counts[key] = (types | {kind}, total + n)
    return {key: FieldInfo(key, frozenset(types), total) for key, (types, total) in counts.items()}


def record_fields(conn: sqlite3.Connection, max_indexed: int) -> dict[str, FieldInfo]:
    """Record the metadata fields and index the ``max_indexed`` most common scalar ones; inside the caller's transaction.

    Only names a filter can use (:data:`index.store.filters.FIELD_PATTERN`) are
    indexed; an index built earlier for a field no longer chosen is dropped.
    """
    fields = scan_fields(conn)
    usable = [f for f in fields.values() if FIELD_PATTERN.fullmatch(f.name) and f.types & _SCALAR_TYPES]
    chosen = {f.name for f in sorted(usable, key=lambda f: (-f.documents, f.name))[:max_indexed]}
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {_FIELDS_TABLE} "
        "(name TEXT PRIMARY KEY, types TEXT NOT NULL, documents INTEGER NOT NULL, indexed INTEGER NOT NULL)"
    )
    conn.execute(f"DELETE FROM {_FIELDS_TABLE}")
    conn.executemany(
        f"INSERT INTO {_FIELDS_TABLE} VALUES (?, ?, ?, ?)",
        [(f.name, json.dumps(sorted(f.types)), f.documents, int(f.name in chosen)) for f in fields.values()],
    )
    existing = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE ?", (f"{_INDEX_PREFIX}%",)
        )
    }
    for name in existing - {_INDEX_PREFIX + field for field in chosen}:
        conn.execute(f'DROP INDEX "{name}"')  # names we made: the prefix and a FIELD_PATTERN name, no quotes
    for field in sorted(chosen):
        # The indexed expression must be spelt exactly as index.store.filter_sql.compile_filter spells it.
        conn.execute(
            f'CREATE INDEX IF NOT EXISTS "{_INDEX_PREFIX}{field}" ON documents (json_extract(metadata, {json_path(field)}))'
        )
    return {name: FieldInfo(f.name, f.types, f.documents, name in chosen) for name, f in fields.items()}


def read_fields(conn: sqlite3.Connection) -> dict[str, FieldInfo] | None:
    """The recorded ``metadata_fields`` table, or ``None`` when the docstore predates it."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_FIELDS_TABLE,)).fetchone():
        return None
    rows = conn.execute(f"SELECT name, types, documents, indexed FROM {_FIELDS_TABLE}").fetchall()
    return {name: FieldInfo(name, frozenset(json.loads(types)), n, bool(indexed)) for name, types, n, indexed in rows}


# ---------------------------------------------------------------------- checking against a store's fields
_NUMBER_TYPES = frozenset({"integer", "real"})
_MAX_LISTED_FIELDS = 50


def check_fields(expr: FilterExpr, fields: Mapping[str, FieldInfo]) -> None:
    """Refuse a filter that names a field no document has, or compares a field that never holds a comparable value.

    ``fields`` is what the docstore(s) recorded (:meth:`DocStore.metadata_fields`);
    the live layer passes the union of its segments' fields. Raises
    :class:`UnknownFieldError` listing the known fields, or
    :class:`InvalidFilterError` for a range that can never match (a numeric range
    on a field that only ever holds text, and the like).
    """
    for leaf in leaves(expr):
        info = fields.get(leaf.field)
        if info is None:
            listed = sorted(fields)[:_MAX_LISTED_FIELDS]
            more = f" and {len(fields) - len(listed)} more" if len(fields) > len(listed) else ""
            raise UnknownFieldError(leaf.path, leaf.field, listed, more)
        if not info.types & _SCALAR_TYPES:
            raise InvalidFilterError(
                leaf.path,
                f"field {leaf.field!r} holds {'/'.join(sorted(info.types))} values; "
                "filters compare strings, numbers and booleans",
            )
        if isinstance(leaf, Range):
            wanted, kind = (_NUMBER_TYPES, "numbers") if leaf.numeric else (frozenset({"text"}), "dates")
            if not info.types & wanted:
                raise InvalidFilterError(
                    leaf.path,
                    f"a range over {kind} can never match: field {leaf.field!r} holds "
                    f"{'/'.join(sorted(info.types))} values",
                )
