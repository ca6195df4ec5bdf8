"""The parsed form of a metadata filter: a tree of frozen pydantic models, and what reads it.

:func:`~index.store.filters.parse_filter` builds it from the JSON syntax; the
SQL compiler (:mod:`index.store.filter_sql`) and the field checks
(:mod:`index.store.metadata_fields`) walk it. Apart from the parser because
they read a tree without parsing anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

__all__ = [
    "And",
    "Bound",
    "FilterExpr",
    "Match",
    "MatchAny",
    "Not",
    "Or",
    "Range",
    "Scalar",
    "filter_fields",
    "leaves",
]

Scalar = Union[str, int, float, bool]  # noqa: UP007 (pydantic wants a runtime union here)
Bound = Union[int, float, str, None]  # noqa: UP007


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Match(_Node):
    """``field`` equals ``value``."""

    kind: Literal["match"] = "match"
    field: str
    value: Scalar
    path: str = "filter"  # where the clause stood in the filter, for error messages


class MatchAny(_Node):
    """``field`` equals one of ``values``."""

    kind: Literal["match_any"] = "match_any"
    field: str
    values: tuple[Scalar, ...]
    path: str = "filter"


class Range(_Node):
    """``field`` within bounds: all numbers, or all ISO-date strings; ``None`` = unbounded."""

    kind: Literal["range"] = "range"
    field: str
    gt: Bound = None
    gte: Bound = None
    lt: Bound = None
    lte: Bound = None
    path: str = "filter"

    @property
    def numeric(self) -> bool:
        return not any(isinstance(b, str) for b in (self.gt, self.gte, self.lt, self.lte))


class And(_Node):
    """Every clause matches."""

    kind: Literal["and"] = "and"
    clauses: tuple[FilterExpr, ...]


class Or(_Node):
    """At least one clause matches."""

    kind: Literal["or"] = "or"
    clauses: tuple[FilterExpr, ...]


class Not(_Node):
    """The clause does not match (a document lacking the field does not match the clause, so it matches this)."""

    kind: Literal["not"] = "not"
    clause: FilterExpr


FilterExpr = Union[Match, MatchAny, Range, And, Or, Not]  # noqa: UP007
for _model in (And, Or, Not):
    _model.model_rebuild()


# ---------------------------------------------------------------------- fields
def leaves(expr: FilterExpr) -> Iterator[Match | MatchAny | Range]:
    if isinstance(expr, And | Or):
        for clause in expr.clauses:
            yield from leaves(clause)
    elif isinstance(expr, Not):
        yield from leaves(expr.clause)
    else:
        yield expr


def filter_fields(expr: FilterExpr) -> set[str]:
    """The metadata field names a filter reads."""
    return {leaf.field for leaf in leaves(expr)}
