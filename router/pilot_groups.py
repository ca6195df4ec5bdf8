"""Pilots grouped around a few centres, so that a kNN vote over many experts reads only the nearest groups.

An exact kNN vote compares a query with every pilot of every expert. At 1,000
pilots an expert (the demo's), 50 experts are 50,000 rows of 384 floats, 77 MB
read for each query: 2-10 ms on 2 cores, against 0.3 ms at 5 experts, growing
with every expert added (bench/routing_stage.py, bench/pilot_probes.py). Here each expert's pilots are split by spherical k-means
into groups of about :data:`GROUP_SIZE`; a query is compared with every group's
centre (about 16 an expert), then with the pilots of its ``probes`` nearest
groups only. That reads about ``centres + probes x GROUP_SIZE`` rows: nearly
flat in the number of experts. It is an inverted file (FAISS's ``IndexIVFFlat``)
in numpy, with lists made per expert, so that adding an expert groups its own
pilots only and the rest are reused.

The nearest pilots found are the exact ones whenever they lie in the probed
groups; :class:`PilotSearch` says above how many pilots the router takes this
path (below it, every pilot is compared, as before).

Reading the probed pilots is what the grouped vote costs: 50 experts' pilots
do not fit in the CPU's caches, so each query reads its few thousand pilots
from memory. With ``reduced_dim``, a copy of the pilots projected on their
main directions (128 of 384: a third of the bytes) is compared first, and
its nearest ``refine`` x k pilots again in full, so the neighbours that vote
are ranked by their full similarity (real pilots, 50 experts: the same
collection first for 98.0% of pseudo queries, as with every dimension;
docs/benchmarks.md, section 25).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.pilots import spherical_kmeans

__all__ = ["GROUP_SIZE", "PilotGroups", "PilotIndex", "PilotSearch", "main_directions"]

#: Pilots per group, about: 1,000 pilots make 16 groups.
GROUP_SIZE = 64


@dataclass(frozen=True, slots=True)
class PilotSearch:
    """How the router finds a query's nearest pilots (``knn`` aggregate).

    ``exact_max``: with at most this many pilots over all experts, compare the
    query with every one (exact); above it, only with the pilots of the
    ``probes`` groups whose centres are nearest (:class:`PilotIndex`). None:
    always exact. The default, 10,000 (10 experts of 1,000 pilots): above it,
    with numpy on one BLAS thread as the service runs it on 2 cores, a single
    query and a batch of 8 are faster grouped (pilots read from memory, as
    after a forward pass: 1.45 ms exact, 0.67 grouped at 10,000 pilots; 2.5
    against 0.73 at 20,000), while a batch of 32 stays faster exact up to
    about 15,000 (6.6 ms against 9.1 at 10,000; bench/pilot_crossover.py).
    """

    exact_max: int | None = 10_000
    probes: int = 48
    #: Pilots per group, about.
    group_size: int = GROUP_SIZE
    #: Dimensions of the first comparison with the probed groups' pilots (None, or >= the pilots': all of them);
    #: the nearest ``refine`` x k of it are compared again in full (:class:`PilotIndex`).
    reduced_dim: int | None = 128
    refine: int = 8

    def __post_init__(self) -> None:
        if (
            (self.exact_max is not None and self.exact_max < 0)
            or self.probes < 1
            or self.group_size < 1
            or (self.reduced_dim is not None and self.reduced_dim < 1)
            or self.refine < 1
        ):
            raise ValueError(
                "exact_max must be >= 0 or None, probes, group_size and refine >= 1, reduced_dim >= 1 or None; got "
                f"{self.exact_max}, {self.probes}, {self.group_size}, {self.refine}, {self.reduced_dim}"
            )

    def grouped(self, pilots: int) -> bool:
        """Whether ``pilots`` pilots in all are searched by their groups."""
        return self.exact_max is not None and pilots > self.exact_max


@dataclass(frozen=True, slots=True)
class PilotGroups:
    """One expert's pilots in groups: unit ``centres`` (g, d); group i holds rows ``order[bounds[i]:bounds[i + 1]]``.

    ``digest`` names the pilots they were made from (:func:`pilots_digest`) and
    ``size`` the group size asked for, so that a router reuses them for those
    pilots and that size only.
    """

    centres: np.ndarray
    order: np.ndarray
    bounds: np.ndarray
    digest: bytes
    size: int

    @classmethod
    def of(cls, pilots: np.ndarray, *, size: int = GROUP_SIZE, seed: int = 0) -> PilotGroups:
        groups = max(1, round(len(pilots) / size))
        labels, centres = spherical_kmeans(pilots, groups, seed=seed, iterations=10)
        held = np.unique(labels)  # groups left empty are dropped
        centres, labels = centres[held], np.searchsorted(held, labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(centres) + 1))
        return cls(centres, order.astype(np.int64), bounds.astype(np.int64), pilots_digest(pilots), size)

    def made_from(self, pilots: np.ndarray, size: int = GROUP_SIZE) -> bool:
        return self.size == size and self.digest == pilots_digest(pilots)


def pilots_digest(pilots: np.ndarray) -> bytes:
    """A digest of a pilot matrix's shape and values (1.5 MB, 1,000 pilots of 384 floats: about 1 ms)."""
    pilots = np.ascontiguousarray(pilots, dtype=np.float32)
    return hashlib.blake2b(repr(pilots.shape).encode() + pilots.tobytes(), digest_size=16).digest()


class PilotIndex:
    """Every expert's groups together, over the router's pilot matrix: experts one after another, each expert's
    pilots in the order of its groups (``PilotGroups.order``), so that every group is one slice of the matrix."""

    def __init__(
        self,
        groups: Sequence[PilotGroups],
        starts: np.ndarray,
        matrix: np.ndarray | None = None,
        *,
        reduced_dim: int | None = None,
        refine: int = 4,
    ) -> None:
        """``matrix`` and ``reduced_dim``: keep the pilots projected on their ``reduced_dim`` main directions too,
        for the first comparison (none when ``reduced_dim`` is None or not below the pilots' dimension)."""
        self.refine = refine
        #: (d, r) orthonormal directions, and the (P, r) pilots projected on them; None: full comparisons only.
        self.basis: np.ndarray | None = None
        self.reduced: np.ndarray | None = None
        if matrix is not None and reduced_dim is not None and reduced_dim < matrix.shape[1]:
            self.basis = main_directions(matrix, reduced_dim)
            self.reduced = np.ascontiguousarray(matrix @ self.basis, dtype=np.float32)
        self.centres = np.concatenate([g.centres for g in groups]).astype(np.float32)
        sizes = [len(g.centres) for g in groups]
        #: Expert (position in the router) of each group, and where each expert's groups start.
        self.group_owner = np.repeat(np.arange(len(groups)), sizes)
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        #: Group j is rows ``bounds[j]:bounds[j + 1]`` of the matrix.
        self.bounds = np.concatenate([g.bounds[:-1] + start for g, start in zip(groups, starts, strict=True)])
        self.ends = np.concatenate([g.bounds[1:] + start for g, start in zip(groups, starts, strict=True)])

    def search(
        self, queries: np.ndarray, matrix: np.ndarray, k: int, probes: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) rows of ``matrix`` nearest each query among the probed groups, and (n, E) each expert's best.

        ``allowed``: (E,) bool, the experts whose pilots may be found. An
        expert's best is the highest similarity among its pilots compared (in
        full where they were compared again, else in the reduced dimensions), or,
        where none was, its nearest centre's (a stand-in for the kNN tie-break).
        Groups are probed nearest first, and beyond ``probes`` until ``k``
        pilots were compared.
        """
        centre_similarity = queries @ self.centres.T  # (n, G)
        centre_similarity[:, ~allowed[self.group_owner]] = -np.inf
        best = np.maximum.reduceat(centre_similarity, self.group_starts, axis=1)  # (n, E): the nearest centre
        nearest = np.empty((len(queries), k), dtype=np.int64)
        first, firsts = (matrix, queries) if self.basis is None else (self.reduced, queries @ self.basis)
        assert first is not None
        for q, row in enumerate(centre_similarity):
            groups = _nearest_groups(row, probes, self.ends - self.bounds, k)
            query = firsts[q]
            similarity = np.concatenate([first[self.bounds[g] : self.ends[g]] @ query for g in groups])
            sizes = self.ends[groups] - self.bounds[groups]
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            if self.basis is None:
                nearest[q] = self._rows(groups, offsets, _top(similarity, k))
            else:  # the reduced comparison's nearest, compared again in full; those keep their full similarity
                candidates = _top(similarity, self.refine * k)
                full = matrix[self._rows(groups, offsets, candidates)] @ queries[q]
                similarity[candidates] = full
                nearest[q] = self._rows(groups, offsets, candidates[_top(full, k)])
            found = np.full(len(allowed), -np.inf, dtype=np.float32)
            np.maximum.at(found, self.group_owner[groups], np.maximum.reduceat(similarity, offsets))
            best[q] = np.where(np.isfinite(found), found, best[q])
        return nearest, best

    def _rows(self, groups: np.ndarray, offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Matrix rows of ``positions`` in the concatenated similarities of ``groups`` (starting at ``offsets``)."""
        part = np.searchsorted(offsets, positions, side="right") - 1  # which probed group each is in
        return self.bounds[groups[part]] + positions - offsets[part]


def _top(similarity: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest (all, when there are no more), in no order."""
    return np.argpartition(-similarity, k - 1)[:k] if len(similarity) > k else np.arange(len(similarity))


def main_directions(matrix: np.ndarray, dims: int, *, sample: int = 16_384) -> np.ndarray:
    """(d, dims) orthonormal directions holding most of the rows' energy (uncentred: inner products are kept best).

    From the eigenvectors of the Gram matrix of at most ``sample`` evenly spaced rows; deterministic.
    """
    step = max(1, -(-len(matrix) // sample))
    rows = np.asarray(matrix[::step], dtype=np.float64)
    _, vectors = np.linalg.eigh(rows.T @ rows)  # ascending eigenvalues
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


def _nearest_groups(similarity: np.ndarray, probes: int, sizes: np.ndarray, k: int) -> np.ndarray:
    """The ``probes`` groups nearest by centre (only usable ones, similarity > -inf), more until they hold ``k`` pilots."""
    usable = int(np.isfinite(similarity).sum())
    take = min(probes, usable)
    order = np.argpartition(-similarity, take - 1)[:take] if take < len(similarity) else np.argsort(-similarity)
    if int(sizes[order].sum()) >= k or take == usable:
        return order
    order = np.argsort(-similarity, kind="stable")[:usable]  # rare: the nearest groups are too small
    held = np.cumsum(sizes[order])
    return order[: int(np.searchsorted(held, k)) + 1]
