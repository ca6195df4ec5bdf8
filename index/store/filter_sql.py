"""A parsed filter compiled to SQL: a parameterised boolean expression over a JSON ``metadata`` column.

The expression is spelt as the expression indexes built by
:meth:`DocStore.export` are (``json_extract(metadata, '$."year"')``), so SQLite
uses them; it serves the published docstore and a live segment's own document
table alike. Apart from the language (:mod:`index.store.filters`) because it
is the one place that knows SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from index.errors import InvalidFilterError
from index.store.filter_tree import And, FilterExpr, Match, MatchAny, Not, Range
from index.store.filters import FIELD_PATTERN, parse_filter

__all__ = ["compile_filter", "json_path"]


def json_path(field: str) -> str:
    """The SQL literal of the JSON path of a (validated) field: ``'$."year"'``.

    It is spliced into the statement, never bound, because an expression index
    is only used when the query spells the same expression; :data:`FIELD_PATTERN`
    admits no quote, so nothing a user writes can escape the literal.
    """
    if not FIELD_PATTERN.fullmatch(field):
        raise InvalidFilterError("filter", f"invalid field name {field[:80]!r}")
    return f"'$.\"{field}\"'"


_COLUMN_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _extract(column: str, field: str) -> str:
    return f"json_extract({column}, {json_path(field)})"


def _range_sql(column: str, expr: Range, params: list[Any]) -> str:
    value = _extract(column, expr.field)
    parts = []
    for op, sign in (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<=")):
        bound = getattr(expr, op)
        if bound is not None:
            parts.append(f"{value} {sign} ?")
            params.append(bound)
    # SQLite orders NULL < numbers < text: a bound on one side alone would let the
    # other kind through ('2001' >= 2000 is true). The empty string is the least
    # text, so these guards keep a range to its own kind and stay index ranges.
    if expr.numeric and expr.lt is None and expr.lte is None:
        parts.append(f"{value} < ''")
    if not expr.numeric and expr.gt is None and expr.gte is None:
        parts.append(f"{value} >= ''")
    return "(" + " AND ".join(parts) + ")"


def _sql(expr: FilterExpr, column: str, params: list[Any]) -> str:
    if isinstance(expr, Match):
        params.append(expr.value)
        return f"{_extract(column, expr.field)} = ?"
    if isinstance(expr, MatchAny):
        params.extend(expr.values)
        return f"{_extract(column, expr.field)} IN ({', '.join('?' * len(expr.values))})"
    if isinstance(expr, Range):
        return _range_sql(column, expr, params)
    if isinstance(expr, Not):
        # IFNULL: a missing field makes the inner clause NULL, and NOT NULL is NULL (no match);
        # "not (year = 2000)" should match a document without a year.
        return f"NOT IFNULL(({_sql(expr.clause, column, params)}), 0)"
    joiner = " AND " if isinstance(expr, And) else " OR "
    return "(" + joiner.join(_sql(clause, column, params) for clause in expr.clauses) + ")"


def compile_filter(expr: FilterExpr | Mapping[str, Any], *, column: str = "metadata") -> tuple[str, list[Any]]:
    """A filter as a parameterised SQL boolean expression over ``column`` (a JSON object as text), and its parameters.

    Values are always bound parameters; field names, checked against
    :data:`FIELD_PATTERN`, appear only inside JSON-path literals. ``column`` may
    be qualified (``d.metadata``) for use in a join.

    >>> compile_filter({"lang": "en"})
    ('json_extract(metadata, \\'$."lang"\\') = ?', ['en'])
    """
    if not _COLUMN_PATTERN.fullmatch(column):
        raise ValueError(f"invalid column name {column!r}")
    params: list[Any] = []
    sql = _sql(parse_filter(expr), column, params)
    return sql, params
