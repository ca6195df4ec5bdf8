"""Metadata filters: a small JSON language, parsed into pydantic models and compiled to SQL.

A filter restricts a search to the documents whose metadata match it. It is
resolved in the document store (an SQL ``WHERE`` over the ``metadata`` JSON
column, helped by expression indexes built at publish time) into a sorted
array of allowed row ids, which the dense side hands to FAISS as an
``IDSelector`` and the lexical side to bm25s as a weight mask. Filtering
*inside* the search, not after it, is what makes a filtered search return
``k`` hits whenever ``k`` documents match.

The syntax is close to Mongo's and Qdrant's::

    {"lang": "en"}                                   equality (string, number or boolean)
    {"source": {"in": ["pubmed", "arxiv"]}}          any of a list (at most 1024 values)
    {"year": {"gte": 2000, "lt": 2010}}              numeric range: gt, gte, lt, lte
    {"published": {"gte": "2021-01-01"}}             ISO-date range (dates compare as ISO text)
    {"year": {"eq": 2001}}                           equality, spelt out
    {"lang": "en", "year": {"gte": 2000}}            several fields in one object: all must match
    {"and": [{"year": {"gte": 2000}}, {"or": [{"lang": "en"}, {"source": "pubmed"}]}]}
    {"not": {"source": {"in": ["retracted"]}}}       negation; documents without the field match it

Rules worth knowing:

* Keys ``and``, ``or`` and ``not`` are the logical operators; every other key
  is a metadata field name: letters, digits, ``_`` and ``-``, starting with a
  letter or ``_``, at most 64 characters (top-level metadata keys only).
* Comparisons are typed: ``{"year": 2001}`` does not match the string
  ``"2001"``; a numeric range never matches text, an ISO-date range never
  matches numbers; ``true`` also matches the number 1 (SQLite stores JSON
  booleans as 1 and 0).
* A document that lacks a field matches no condition on it, except under ``not``.
* Size is bounded (:data:`MAX_DEPTH`, :data:`MAX_CONDITIONS`, :data:`MAX_IN_VALUES`,
  :data:`MAX_STRING_LENGTH`) so that a hostile filter cannot build a huge SQL statement.

Every error names the offending clause by its path, as an API client would
write it: ``filter.and[1].year: 'gte' needs a number or an ISO date, got 'abc'``.

The parsed tree is :mod:`index.store.filter_tree`;
:func:`~index.store.metadata_fields.check_fields` refuses fields a store does
not have; :func:`~index.store.filter_sql.compile_filter` turns a filter into a
parameterised SQL boolean expression over the ``metadata`` JSON column (of the
published docstore or of a live segment's own document table), spelt as the
expression indexes built by :meth:`DocStore.export` are
(``json_extract(metadata, '$."year"')``).

>>> parse_filter({"and": [{"year": {"gte": 2000}}, {"lang": "en"}]})  # doctest: +SKIP
And(kind='and', clauses=(Range(..., field='year', gte=2000, ...), Match(..., field='lang', value='en', ...)))
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from index.errors import InvalidFilterError
from index.store.filter_tree import And, FilterExpr, Match, MatchAny, Not, Or, Range, Scalar

__all__ = [
    "FIELD_PATTERN",
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "MAX_IN_VALUES",
    "MAX_STRING_LENGTH",
    "Filter",
    "filter_to_json",
    "parse_filter",
]

#: Nesting of and/or/not, counted from the top object (depth 1).
MAX_DEPTH = 8
#: Field conditions in one filter (a range with two bounds is one condition).
MAX_CONDITIONS = 64
#: Values of one ``in`` list, and of all ``in`` lists of a filter together (×4).
MAX_IN_VALUES = 1024
#: Characters of one string value.
MAX_STRING_LENGTH = 1024
#: What a field name may look like; it is spliced into a JSON path inside SQL, so nothing else gets through.
FIELD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")

_LOGICAL = ("and", "or", "not")
_RANGE_OPS = ("gt", "gte", "lt", "lte")
_OPERATORS = ("eq", "gt", "gte", "in", "lt", "lte")
_INT64 = 1 << 63
_DATE_PATTERN = re.compile(r"\d{4}-\d{2}(-\d{2}([T ].*)?)?")


# ---------------------------------------------------------------------- parsing
class _Parser:
    """One parse: walks the raw JSON with the path of each clause, counting conditions and values."""

    def __init__(self) -> None:
        self.conditions = 0
        self.in_values = 0

    def node(self, raw: Any, path: str, depth: int) -> FilterExpr:
        if depth > MAX_DEPTH:
            raise InvalidFilterError(path, f"nested deeper than {MAX_DEPTH} levels of and/or/not")
        if not isinstance(raw, Mapping):
            raise InvalidFilterError(
                path, f'expected an object like {{"field": value}} or {{"and": [...]}}, got {_json_kind(raw)}'
            )
        if not raw:
            raise InvalidFilterError(path, "an empty object; leave the filter out to search every document")
        clauses: list[FilterExpr] = []
        for key, value in raw.items():
            if not isinstance(key, str):
                raise InvalidFilterError(path, f"keys must be strings, got {key!r}")
            if key in ("and", "or"):
                clauses.append(self.branches(key, value, f"{path}.{key}", depth))
            elif key == "not":
                clauses.append(Not(clause=self.node(value, f"{path}.not", depth + 1)))
            else:
                clauses.append(self.field(key, value, path))
        return clauses[0] if len(clauses) == 1 else And(clauses=tuple(clauses))

    def branches(self, key: str, raw: Any, path: str, depth: int) -> FilterExpr:
        if not isinstance(raw, list) or not raw:
            raise InvalidFilterError(path, f"'{key}' needs a non-empty list of filters, got {_json_kind(raw)}")
        if len(raw) > MAX_CONDITIONS:
            raise InvalidFilterError(path, f"'{key}' lists {len(raw)} filters; at most {MAX_CONDITIONS}")
        clauses = tuple(self.node(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(raw))
        if len(clauses) == 1:
            return clauses[0]
        return And(clauses=clauses) if key == "and" else Or(clauses=clauses)

    def field(self, name: str, raw: Any, parent: str) -> FilterExpr:
        path = f"{parent}.{name}"
        if not FIELD_PATTERN.fullmatch(name):
            raise InvalidFilterError(
                path,
                f"invalid field name {name[:80]!r}: use letters, digits, '_' and '-', starting with a letter "
                "or '_', at most 64 characters (or the operators 'and', 'or', 'not')",
            )
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InvalidFilterError(path, f"more than {MAX_CONDITIONS} field conditions in one filter")
        if not isinstance(raw, Mapping):
            return Match(field=name, value=self.scalar(raw, path), path=path)
        if not raw:
            raise InvalidFilterError(path, f"an empty condition; use a value or one of {', '.join(_OPERATORS)}")
        unknown = [op for op in raw if op not in _OPERATORS]
        if unknown:
            raise InvalidFilterError(
                path, f"unknown operator {str(unknown[0])[:40]!r}; valid operators: {', '.join(_OPERATORS)}"
            )
        parts: list[FilterExpr] = []
        if "eq" in raw:
            parts.append(Match(field=name, value=self.scalar(raw["eq"], f"{path}.eq"), path=path))
        if "in" in raw:
            parts.append(self.any_of(name, raw["in"], path))
        bounds = {op: self.bound(op, raw[op], path) for op in _RANGE_OPS if op in raw}
        if bounds:
            parts.append(self.range(name, bounds, path))
        return parts[0] if len(parts) == 1 else And(clauses=tuple(parts))

    def scalar(self, raw: Any, path: str) -> Scalar:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int):
            if not -_INT64 <= raw < _INT64:
                raise InvalidFilterError(path, f"integer {raw} is outside the 64-bit range")
            return raw
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise InvalidFilterError(path, f"{raw} is not a finite number")
            return raw
        if isinstance(raw, str):
            if len(raw) > MAX_STRING_LENGTH:
                raise InvalidFilterError(path, f"a string of {len(raw)} characters; at most {MAX_STRING_LENGTH}")
            return raw
        if raw is None:
            raise InvalidFilterError(path, "null is not a value to compare with; use a string, number or boolean")
        if isinstance(raw, list):
            raise InvalidFilterError(path, 'a list is not a value to compare with; use {"in": [...]} for any of a list')
        raise InvalidFilterError(path, f"expected a string, number or boolean, got {_json_kind(raw)}")

    def any_of(self, name: str, raw: Any, path: str) -> MatchAny:
        if not isinstance(raw, list) or not raw:
            raise InvalidFilterError(f"{path}.in", f"'in' needs a non-empty list of values, got {_json_kind(raw)}")
        if len(raw) > MAX_IN_VALUES:
            raise InvalidFilterError(f"{path}.in", f"'in' lists {len(raw)} values; at most {MAX_IN_VALUES}")
        self.in_values += len(raw)
        if self.in_values > 4 * MAX_IN_VALUES:
            raise InvalidFilterError(f"{path}.in", f"more than {4 * MAX_IN_VALUES} 'in' values in one filter")
        values = tuple(self.scalar(value, f"{path}.in[{i}]") for i, value in enumerate(raw))
        return MatchAny(field=name, values=values, path=path)

    def bound(self, op: str, raw: Any, path: str) -> int | float | str:
        wrong = f"'{op}' needs a number or an ISO date (2021-06-30, 2021-06-30T12:00:00Z), got {_short(raw)}"
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise InvalidFilterError(path, wrong)
        if isinstance(raw, str):
            if not _is_iso_date(raw):
                raise InvalidFilterError(path, wrong)
            return raw
        return self.scalar(raw, f"{path}.{op}")  # finite, in range

    def range(self, name: str, bounds: dict[str, int | float | str], path: str) -> Range:
        if "gt" in bounds and "gte" in bounds or "lt" in bounds and "lte" in bounds:
            raise InvalidFilterError(path, "give one lower bound ('gt' or 'gte') and one upper ('lt' or 'lte')")
        if len({isinstance(b, str) for b in bounds.values()}) > 1:
            raise InvalidFilterError(path, "mixes a number and a date in one range; use one kind for every bound")
        return Range(field=name, path=path, **bounds)


def _is_iso_date(text: str) -> bool:
    """An ISO 8601 date or date-time (what ``datetime.fromisoformat`` reads), year first so text order is time order."""
    if len(text) > 64 or not _DATE_PATTERN.fullmatch(text):
        return False
    try:
        dt.datetime.fromisoformat(text if len(text) > 7 else f"{text}-01")
    except ValueError:
        return False
    return True


def _json_kind(raw: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    for kind, name in kinds.items():
        if isinstance(raw, kind):
            return name
    return "a number" if isinstance(raw, int | float) else type(raw).__name__


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else f"{text[:57]}..."


def parse_filter(raw: Any, *, path: str = "filter") -> FilterExpr:
    """Validate a filter given as JSON (dicts and lists) and return its tree; an already parsed tree passes through.

    Raises :class:`InvalidFilterError` (a ``ValueError``) naming the offending
    clause by ``path``, so an API can answer 422 with it.

    >>> parse_filter({"year": {"gte": 2000, "lt": 2010}})
    Range(kind='range', field='year', gt=None, gte=2000, lt=2010, lte=None, path='filter.year')
    """
    if isinstance(raw, Match | MatchAny | Range | And | Or | Not):
        return raw
    return _Parser().node(raw, path, 1)


def filter_to_json(expr: FilterExpr) -> dict[str, Any]:
    """The filter back in its JSON syntax (for logs, responses and round trips)."""
    if isinstance(expr, Match):
        return {expr.field: expr.value}
    if isinstance(expr, MatchAny):
        return {expr.field: {"in": list(expr.values)}}
    if isinstance(expr, Range):
        bounds = {op: getattr(expr, op) for op in _RANGE_OPS if getattr(expr, op) is not None}
        return {expr.field: bounds}
    if isinstance(expr, Not):
        return {"not": filter_to_json(expr.clause)}
    return {"and" if isinstance(expr, And) else "or": [filter_to_json(c) for c in expr.clauses]}


_FILTER_SCHEMA = {
    "type": "object",
    "description": (
        'A metadata filter: {"field": value}, {"field": {"in": [...]}}, {"field": {"gte": 2000, "lt": 2010}} '
        '(numbers or ISO dates), combined with {"and": [...]}, {"or": [...]}, {"not": {...}}.'
    ),
    "examples": [{"and": [{"year": {"gte": 2000, "lt": 2010}}, {"source": {"in": ["a", "b"]}}, {"lang": "en"}]}],
}


def _validate(raw: Any) -> FilterExpr:
    return parse_filter(raw)


Filter = Annotated[
    FilterExpr,
    BeforeValidator(_validate),
    PlainSerializer(filter_to_json, return_type=dict),
    WithJsonSchema(_FILTER_SCHEMA),
]
"""A request field that takes a filter in its JSON syntax: ``filter: Filter | None = None``.

Validation errors come out as pydantic errors whose message carries the
clause's path (``Value error, filter.and[1].year: ...``); the OpenAPI schema
shows a plain JSON object with the syntax and an example.
"""
