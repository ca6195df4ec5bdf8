"""Dense + lexical fusion on score/id arrays: min-max weighted sum and RRF."""

from __future__ import annotations

import numpy as np
import pytest

from index import InvalidParameterError, fuse_dense_lexical


def lists(pairs: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[s for _, s in pairs]], dtype=np.float32), np.array([[i for i, _ in pairs]], dtype=np.int64)


DENSE = lists([(1, 0.9), (2, 0.85), (4, 0.5)])
LEXICAL = lists([(2, 7.0), (3, 3.0), (-1, -np.inf)])  # a padded lexical list (fewer than k matches)


def test_weighted_fusion_normalises_each_list_and_keeps_both_raw_scores() -> None:
    fused = fuse_dense_lexical(DENSE, LEXICAL, k=5)
    # dense normalised: 1 -> 1, 2 -> .875, 4 -> 0; lexical: 2 -> 1, 3 -> 0; half of each.
    assert fused.ids.tolist() == [[2, 1, 3, 4, -1]]
    np.testing.assert_allclose(fused.scores[0, :4], [0.9375, 0.5, 0.0, 0.0], atol=1e-6)
    assert fused.dense[0, 0] == pytest.approx(0.85) and fused.lexical[0, 0] == pytest.approx(7.0)
    assert np.isnan(fused.lexical[0, 1]) and np.isnan(fused.dense[0, 2])  # 1 is dense-only, 3 lexical-only
    assert fused.scores[0, 4] == -np.inf


def test_weight_one_is_dense_order_and_weight_zero_lexical_first() -> None:
    assert fuse_dense_lexical(DENSE, LEXICAL, k=2, weight=1.0).ids[0].tolist() == [1, 2]
    assert fuse_dense_lexical(DENSE, LEXICAL, k=1, weight=0.0).ids[0].tolist() == [2]  # the rest tie at 0


def test_rrf_adds_reciprocal_ranks() -> None:
    fused = fuse_dense_lexical(DENSE, LEXICAL, k=4, method="rrf")
    assert fused.ids[0, 0] == 2 and fused.scores[0, 0] == pytest.approx(1 / 62 + 1 / 61)
    assert fused.ids[0, 1:].tolist() == [1, 3, 4]  # rank 1, rank 2 (lexical), rank 3; ties by row id


def test_a_query_with_no_lexical_match_keeps_its_dense_ranking() -> None:
    nothing = (np.full((1, 3), -np.inf, dtype=np.float32), np.full((1, 3), -1, dtype=np.int64))
    assert fuse_dense_lexical(DENSE, nothing, k=3).ids.tolist() == [[1, 2, 4]]
    both_empty = fuse_dense_lexical(nothing, nothing, k=2)
    assert both_empty.ids.tolist() == [[-1, -1]]


def test_bad_parameters_are_refused_with_the_choices() -> None:
    with pytest.raises(InvalidParameterError, match="weighted, rrf"):
        fuse_dense_lexical(DENSE, LEXICAL, k=3, method="max")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="between 0 and 1"):
        fuse_dense_lexical(DENSE, LEXICAL, k=3, weight=1.5)
