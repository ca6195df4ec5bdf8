"""Training pairs: titles, spans, untitled documents, supervised mapping, seeding."""

from __future__ import annotations

import logging

import pytest

from experts import TrainingPair, combine_pairs, pseudo_pairs, supervised_pairs

TEXT = "the pressure distribution on a thin swept wing at supersonic speed was measured in a wind tunnel"
DOCS = [
    ("Swept wings at supersonic speed", TEXT),
    ("", "heat transfer through a laminar boundary layer on a flat plate with suction at high mach numbers"),
    ("A title only", ""),
]


def test_titled_documents_give_their_title_and_spans() -> None:
    pairs = pseudo_pairs(DOCS, spans_with_title=2, spans_without_title=3, seed=0)
    by_row = {row: [p for p in pairs if p.positives == (row,)] for row in range(3)}
    assert [p.kind for p in by_row[0]] == ["title", "span", "span"]
    assert by_row[0][0].query == "Swept wings at supersonic speed"
    for pair in by_row[0][1:]:
        assert 4 <= len(pair.query.split()) <= 12 and pair.query in TEXT  # contiguous words of the text


def test_untitled_documents_give_three_spans_and_empty_texts_none() -> None:
    pairs = pseudo_pairs(DOCS, seed=0)
    untitled = [p for p in pairs if p.positives == (1,)]
    assert [p.kind for p in untitled] == ["span"] * 3
    assert [p.kind for p in pairs if p.positives == (2,)] == ["title"]


def test_a_title_repeated_at_the_start_of_the_text_is_not_cropped_again() -> None:
    title = "experimental investigation of the aerodynamics of a wing in a slipstream ."
    text = title + " an experimental study of a wing in a propeller slipstream was made"
    spans = [p.query for p in pseudo_pairs([(title, text)], spans_with_title=20, min_words=12, max_words=12)]
    assert spans[0] == title
    assert all(span.startswith("an experimental study") for span in spans[1:])  # the only 12 words left


def test_pairs_are_seeded() -> None:
    assert pseudo_pairs(DOCS, seed=3) == pseudo_pairs(DOCS, seed=3)
    assert pseudo_pairs(DOCS, seed=3) != pseudo_pairs(DOCS, seed=4)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="min_words <= max_words"):
        pseudo_pairs(DOCS, min_words=5, max_words=4)
    with pytest.raises(ValueError, match="span counts"):
        pseudo_pairs(DOCS, spans_with_title=-1)
    with pytest.raises(ValueError, match="non-empty query"):
        TrainingPair(" ", (0,), "title")
    with pytest.raises(ValueError, match="positives"):
        TrainingPair("q", (), "title")


def test_supervised_pairs_map_judged_documents_to_rows(caplog: pytest.LogCaptureFixture) -> None:
    queries = {"q1": "does vitamin d prevent fractures", "q2": "statins and memory", "q3": "no judgements kept"}
    qrels = {"q1": {"d2": 1, "d0": 2, "gone": 1}, "q2": {"d1": 1, "d0": 0}, "q3": {"gone": 1}, "q4": {"d1": 1}}
    rows = {"d0": 0, "d1": 1, "d2": 2}
    with caplog.at_level(logging.WARNING):
        pairs = supervised_pairs(queries, qrels, rows)
    assert pairs == [
        TrainingPair("does vitamin d prevent fractures", (0, 2), "supervised"),
        TrainingPair("statins and memory", (1,), "supervised"),  # relevance 0 is not a positive
    ]
    assert "2 judgements name documents not in the collection" in caplog.text
    with pytest.raises(ValueError, match="no usable supervised pairs"):
        supervised_pairs(queries, {"q3": {"gone": 1}}, rows)


def test_combine_repeats_the_supervised_pairs() -> None:
    pseudo = pseudo_pairs(DOCS[:1], spans_with_title=0)
    supervised = [TrainingPair("q", (0,), "supervised")]
    combined = combine_pairs(pseudo, supervised, supervised_repeat=3)
    assert [p.kind for p in combined] == ["title", "supervised", "supervised", "supervised"]
