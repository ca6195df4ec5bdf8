"""The metadata fields a store holds, and a filter checked against them.

A docstore records what it holds under each top-level metadata key
(:class:`FieldInfo`); :func:`check_fields` refuses a filter that names a field
no document has, or compares one that never holds a comparable value, before
any SQL runs. Apart from the language (:mod:`index.store.filters`) because it
needs a store's fields, which parsing does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from index.errors import InvalidFilterError, UnknownFieldError
from index.store.filter_tree import FilterExpr, Range, leaves

__all__ = ["FieldInfo", "check_fields"]


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


# ---------------------------------------------------------------------- checking against a store's fields
_SCALAR_TYPES = frozenset({"text", "integer", "real", "true", "false"})
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
