from __future__ import annotations

from dataclasses import dataclass

import pytest

from index import Hit, InvalidParameterError, reciprocal_rank_fusion


def _hits(*ids: str, text: str = "") -> list[Hit]:
    return [Hit(id=i, score=10.0 - n, title="", text=text or i) for n, i in enumerate(ids)]


def test_rrf_order_on_a_hand_made_example() -> None:
    dense = _hits("a", "b", "c", "d")
    lexical = _hits("c", "a", "e")
    fused = reciprocal_rank_fusion([dense, lexical], k=60, limit=10)
    # a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62; e: 1/63; d: 1/64
    assert [h.id for h in fused] == ["a", "c", "b", "e", "d"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[-1].score == pytest.approx(1 / 64)


def test_same_id_merges_across_lists_and_counts_once_within_a_list() -> None:
    fused = reciprocal_rank_fusion([_hits("x", "x", "y"), _hits("y")], k=0, limit=5)
    assert {h.id: h.score for h in fused} == {"x": pytest.approx(1.0), "y": pytest.approx(1 / 3 + 1.0)}
    assert [h.id for h in fused] == ["y", "x"]


def test_representative_comes_from_the_best_rank_and_limit_applies() -> None:
    first = [Hit("q", 0.1, "", "from first, rank 2")]
    first.insert(0, Hit("p", 0.2, "", "p"))
    second = [Hit("q", 0.9, "", "from second, rank 1")]
    fused = reciprocal_rank_fusion([first, second], limit=1)
    assert len(fused) == 1 and fused[0].id == "q" and fused[0].text == "from second, rank 1"


def test_ties_are_deterministic() -> None:
    fused = reciprocal_rank_fusion([_hits("a", "b"), _hits("b", "a")], limit=2)
    assert [h.id for h in fused] == ["a", "b"]
    assert reciprocal_rank_fusion([], limit=3) == []


@pytest.mark.parametrize(("k", "limit"), [(-1, 5), (60, 0), (60, -2)])
def test_bad_arguments(k: int, limit: int) -> None:
    with pytest.raises(InvalidParameterError):
        reciprocal_rank_fusion([_hits("a")], k=k, limit=limit)


def test_a_key_keeps_equal_ids_of_different_collections_apart() -> None:
    @dataclass(frozen=True)
    class Tagged:
        collection: str
        id: str
        score: float

    cacm = [Tagged("cacm", "1", 0.9), Tagged("cacm", "2", 0.8)]
    cisi = [Tagged("cisi", "1", 0.7), Tagged("cisi", "3", 0.6)]
    fused = reciprocal_rank_fusion([cacm, cisi], limit=10, key=lambda h: (h.collection, h.id))
    assert [(h.collection, h.id) for h in fused] == [("cacm", "1"), ("cisi", "1"), ("cacm", "2"), ("cisi", "3")]
    assert fused[0].score == pytest.approx(1 / 61)
    assert len(reciprocal_rank_fusion([cacm, cisi], limit=10)) == 3  # by id alone the two "1"s merge
