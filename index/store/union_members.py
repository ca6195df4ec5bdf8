"""Document numbers of a union index (:mod:`index.store.union_dense`, :mod:`index.store.union_lexical`).

A union numbers the documents of its members one member after the other,
each member's rows ascending; :class:`UnionMembers` maps a number back to
(member, row) and a member's rows to numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UnionMembers"]


class UnionMembers:
    """Members' rows numbered 0..D-1: document ``starts[m] + i`` is row ``rows[m][i]`` of member ``m``.

    >>> members = UnionMembers([np.array([3, 7]), np.array([0])])
    >>> members.member_of.tolist(), members.row_of.tolist(), members.documents_of(0, np.array([7, 5])).tolist()
    ([0, 0, 1], [3, 7, 0], [1])
    """

    def __init__(self, rows: Sequence[np.ndarray]) -> None:
        #: Per member, its row ids ascending.
        self.rows = tuple(np.asarray(r, dtype=np.int64) for r in rows)
        sizes = np.asarray([len(r) for r in self.rows], dtype=np.int64)
        #: (M + 1,) where each member's documents start.
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        #: (D,) the member of each document.
        self.member_of = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        #: (D,) the row id of each document in its member.
        self.row_of = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def nbytes(self) -> int:
        return self.starts.nbytes + self.member_of.nbytes + self.row_of.nbytes + sum(r.nbytes for r in self.rows)

    @property
    def count(self) -> int:
        """Members."""
        return len(self.rows)

    def documents_of(self, member: int, rows: np.ndarray) -> np.ndarray:
        """The document numbers of ``rows`` of ``member``: (r,) -> (<= r,); rows it does not hold are left out."""
        own = self.rows[member]
        if not len(own) or not len(rows):
            return np.zeros(0, dtype=np.int64)
        positions = np.searchsorted(own, rows).clip(max=len(own) - 1)
        return self.starts[member] + positions[own[positions] == rows]

    def excluded(self, asked: Sequence[int], dead: Sequence[np.ndarray]) -> np.ndarray | None:
        """(D,) bool: True for the documents of members not ``asked`` and for ``dead[i]`` rows of ``asked[i]``.

        None when nothing is excluded (every member asked, no dead rows).
        """
        if len(asked) == self.count and not any(len(rows) for rows in dead):
            return None
        mask = np.ones(len(self), dtype=bool)
        for member, rows in zip(asked, dead, strict=True):
            mask[self.starts[member] : self.starts[member + 1]] = False
            mask[self.documents_of(member, rows)] = True
        return mask
