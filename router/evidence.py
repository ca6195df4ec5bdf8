"""Corpus evidence for routing: which experts' collections hold the documents a query finds.

Pilots describe the queries an expert was built from; for a corpus-only
expert those are pseudo queries (titles, spans of text), which look unlike a
user's question. Federated search's collection selection asks the collections
themselves instead: search each one, merge the best documents, and see whose
they are. The engine runs the searches (with the base query vector it already
holds, and BM25); this module turns their scores into per-expert votes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from router.errors import RouterError

#: How a kind of corpus evidence becomes votes: ``share``, each expert's share of the ``depth`` best
#: documents over all experts; ``best``, a softmax over the experts of the mean of each one's
#: :data:`BEST_OF` best scores (:func:`best_score_votes`).
VoteRule = Literal["share", "best"]
VOTE_RULES: tuple[VoteRule, ...] = ("share", "best")
#: Kinds of evidence: dense (cosines of one base vector, one scale) or BM25 (scale varies by query).
EvidenceKind = Literal["dense", "lexical"]
#: ``best`` rule: how many of an expert's best documents make its score, and the softmax temperatures: on the
#: dense cosine, and on BM25 scores divided by the best expert's. Chosen on pseudo queries whose source document
#: was taken out of the votes (bench/late_domain.py --split dev --ad-hoc), in the middle of the plateau.
BEST_OF = 5
TEMPERATURE: dict[EvidenceKind, float] = {"dense": 0.01, "lexical": 0.1}


def document_votes(scores_per_expert: Sequence[np.ndarray], *, depth: int) -> np.ndarray:
    """Each expert's share of the ``depth`` best documents over all experts: E arrays (n, m) -> (n, E).

    ``scores_per_expert[e]`` holds the scores of expert ``e``'s top documents
    for each query (``-inf`` pads a short list; an expert that was not searched
    may pass an (n, 0) array). Scores are compared across experts as they are,
    so they must be on one scale (cosine of the same base vector; BM25 only
    roughly). A query no expert found anything for gets all zeros.

    >>> a = np.array([[0.9, 0.5]]); b = np.array([[0.7, 0.6]])
    >>> document_votes([a, b], depth=2).tolist()
    [[0.5, 0.5]]
    """
    if depth < 1:
        raise RouterError(f"depth must be >= 1, got {depth}")
    if not scores_per_expert:
        raise RouterError("no experts to take votes from")
    n = len(scores_per_expert[0])
    if any(len(s) != n for s in scores_per_expert):
        raise RouterError(f"every expert's scores must cover the same {n} queries")
    merged = np.concatenate([np.asarray(s, dtype=np.float64).reshape(n, -1) for s in scores_per_expert], axis=1)
    owner = np.concatenate([np.full(np.asarray(s).reshape(n, -1).shape[1], e) for e, s in enumerate(scores_per_expert)])
    votes = np.zeros((n, len(scores_per_expert)), dtype=np.float32)
    if merged.shape[1] == 0:
        return votes
    take = min(depth, merged.shape[1])
    top = np.argsort(-merged, axis=1, kind="stable")[:, :take]
    for row, columns in enumerate(top):
        found = columns[np.isfinite(merged[row, columns])]
        if len(found):
            np.add.at(votes[row], owner[found], 1.0 / len(found))
    return votes


def ranked_votes(scores: np.ndarray, owners: np.ndarray, *, experts: int, depth: int) -> np.ndarray:
    """Each expert's share of the ``depth`` best candidates: (n, m) scores and owners -> (n, E) votes.

    The same votes as :func:`document_votes` given each expert's list, for
    candidates that come merged (one search over every collection): row ``i``
    holds scores ``scores[i]`` of documents of experts ``owners[i]`` (0..E-1;
    -1 or a non-finite score pads). Ties rank the lower expert first, as
    :func:`document_votes` ranks the earlier list first.

    >>> ranked_votes(np.array([[0.9, 0.7, 0.6, 0.5]]), np.array([[0, 1, 1, 0]]), experts=2, depth=2).tolist()
    [[0.5, 0.5]]
    """
    if depth < 1:
        raise RouterError(f"depth must be >= 1, got {depth}")
    if experts < 1:
        raise RouterError("no experts to take votes from")
    scores = np.asarray(scores, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    if scores.shape != owners.shape or scores.ndim != 2:
        raise RouterError(
            f"scores and owners must be (n, m) arrays of one shape, got {scores.shape} and {owners.shape}"
        )
    votes = np.zeros((len(scores), experts), dtype=np.float32)
    if scores.shape[1] == 0:
        return votes
    valid = np.isfinite(scores) & (owners >= 0)
    if (owners[valid] >= experts).any():
        raise RouterError(f"owners must be expert positions 0..{experts - 1}")
    take = min(depth, scores.shape[1])
    # Best first, ties to the lower owner; padding last.
    order = np.lexsort((np.where(valid, owners, experts), np.where(valid, -scores, np.inf)), axis=1)[:, :take]
    for row, columns in enumerate(order):
        found = columns[valid[row, columns]]
        if len(found):
            np.add.at(votes[row], owners[row, found], 1.0 / len(found))
    return votes


def best_score_votes(
    scores: np.ndarray,
    owners: np.ndarray,
    *,
    experts: int,
    depth: int,
    kind: EvidenceKind,
    searched: np.ndarray | None = None,
) -> np.ndarray:
    """Votes by each expert's best scores: (n, m) scores and owners of merged candidates -> (n, E), rows sum to 1.

    Of the ``depth`` best candidates over all experts, each expert's
    :data:`BEST_OF` best make its score (their mean); slots it has no
    candidate for take the ``depth``-th best score, an upper bound of what its
    next documents score (or, when fewer than ``depth`` were found: the
    lowest found for ``dense``, 0, a BM25 score without a matching term, for
    ``lexical``). ``lexical`` scores are divided by the best expert's, since
    BM25's scale varies with the query. A softmax at :data:`TEMPERATURE`
    turns the scores into votes.

    Unlike a share of the best documents (:func:`ranked_votes`), this hardly
    grows with an expert's size: a collection ten times larger holds about
    ten times as many near documents, but its best few score only a little
    higher. ``searched``: (E,) bool, the experts whose index was searched
    (an expert without a BM25 index gets no lexical vote); a query for which
    nothing was found gets all zeros.

    >>> votes = best_score_votes(np.array([[0.9, 0.8, 0.5]]), np.array([[0, 0, 1]]), experts=2, depth=3, kind="dense")
    >>> [round(v, 3) for v in votes[0].tolist()]
    [1.0, 0.0]
    """
    if depth < 1:
        raise RouterError(f"depth must be >= 1, got {depth}")
    if experts < 1:
        raise RouterError("no experts to take votes from")
    if kind not in TEMPERATURE:
        raise RouterError(f"Invalid kind {kind!r}. Valid kinds are: {', '.join(TEMPERATURE)}")
    scores = np.asarray(scores, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    if scores.shape != owners.shape or scores.ndim != 2:
        raise RouterError(
            f"scores and owners must be (n, m) arrays of one shape, got {scores.shape} and {owners.shape}"
        )
    valid = np.isfinite(scores) & (owners >= 0)
    if (owners[valid] >= experts).any():
        raise RouterError(f"owners must be expert positions 0..{experts - 1}")
    searched = np.ones(experts, dtype=bool) if searched is None else np.asarray(searched, dtype=bool)
    n = len(scores)
    votes = np.zeros((n, experts), dtype=np.float32)
    found = valid.sum(axis=1)
    if not n or not found.any():
        return votes
    ranked = -np.sort(np.where(valid, -scores, np.inf), axis=1)  # best first, -inf last
    kept = np.minimum(found, depth)
    cut = ranked[np.arange(n), np.maximum(kept - 1, 0)]  # the lowest candidate kept
    short_floor = cut if kind == "dense" else np.zeros(n)
    floor = np.where(found >= depth, cut, short_floor)
    taken = valid & (scores >= cut[:, None])
    # Each row's candidates by expert, best first within one; an expert's first BEST_OF add up, best first,
    # so that the same candidates give the same sums bit for bit, however many others came with them.
    grouped = np.where(taken, owners, experts)
    order = np.lexsort((np.where(taken, -scores, np.inf), grouped), axis=1)
    grouped = np.take_along_axis(grouped, order, axis=1)
    ordered = np.take_along_axis(scores, order, axis=1)
    position = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    starts = np.ones(scores.shape, dtype=bool)
    starts[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    rank = position - np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    use = (grouped < experts) & (rank < BEST_OF)
    slot = (np.arange(n)[:, None] * experts + grouped)[use]
    total = np.zeros(n * experts)
    np.add.at(total, slot, ordered[use])
    counts = np.bincount(slot, minlength=n * experts).reshape(n, experts)
    mean = (total.reshape(n, experts) + (BEST_OF - counts) * floor[:, None]) / BEST_OF
    live = found > 0
    if kind == "lexical":
        top = np.where(searched, mean, -np.inf).max(axis=1)
        live &= top > 0
        mean = mean / np.where(top > 0, top, 1.0)[:, None]
    logits = np.where(searched, mean / TEMPERATURE[kind], -np.inf)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    votes[live] = (weights / weights.sum(axis=1, keepdims=True))[live]
    return votes


def candidate_votes(
    scores: np.ndarray,
    owners: np.ndarray,
    *,
    experts: int,
    depth: int,
    rule: VoteRule,
    kind: EvidenceKind,
    searched: np.ndarray | None = None,
) -> np.ndarray:
    """(n, E) votes of merged candidates by ``rule``: :func:`ranked_votes` (``share``) or :func:`best_score_votes`."""
    if rule == "share":
        return ranked_votes(scores, owners, experts=experts, depth=depth)
    if rule == "best":
        return best_score_votes(scores, owners, experts=experts, depth=depth, kind=kind, searched=searched)
    raise RouterError(f"Invalid vote rule {rule!r}. Valid rules are: {', '.join(VOTE_RULES)}")


def expert_list_votes(
    scores_per_expert: Sequence[np.ndarray], *, depth: int, rule: VoteRule, kind: EvidenceKind
) -> np.ndarray:
    """:func:`candidate_votes` of each expert's own top documents (E arrays (n, m); an (n, 0) array: not searched).

    The same votes as the merged candidates of one search over every expert give.
    """
    if not scores_per_expert:
        raise RouterError("no experts to take votes from")
    n = len(scores_per_expert[0])
    if any(len(s) != n for s in scores_per_expert):
        raise RouterError(f"every expert's scores must cover the same {n} queries")
    lists = [np.asarray(s, dtype=np.float64).reshape(n, -1) for s in scores_per_expert]
    merged = np.concatenate(lists, axis=1)
    owners = np.broadcast_to(np.concatenate([np.full(s.shape[1], e) for e, s in enumerate(lists)]), merged.shape)
    searched = np.array([s.shape[1] > 0 for s in lists])
    return candidate_votes(merged, owners, experts=len(lists), depth=depth, rule=rule, kind=kind, searched=searched)
