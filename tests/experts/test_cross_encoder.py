"""The cross-encoder against a direct forward pass of the same checkpoint with transformers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from experts import CrossEncoder, ModelLoadError
from tests.conftest import cross_encoder_reference as direct_scores
from tests.conftest import make_tiny_cross_encoder

QUERY = "lift of a swept wing"
DOCUMENTS = [
    "wing lift at supersonic speed",
    "a compiler for algol",
    "bone fractures and vitamin d " * 20,  # longer than the others: passes are sorted by length
    "shock wave",
    "",
    "sorting methods on magnetic tape",
    "boundary layer transition on a flat plate",
]


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder_path: Path) -> CrossEncoder:
    return CrossEncoder(tiny_cross_encoder_path, batch_size=3)


def test_scores_are_the_sigmoid_of_the_logit_in_the_callers_order(
    cross_encoder: CrossEncoder, tiny_cross_encoder_path: Path
) -> None:
    scores = cross_encoder.score(QUERY, DOCUMENTS)
    assert scores.dtype == np.float32 and scores.shape == (len(DOCUMENTS),)
    np.testing.assert_allclose(scores, direct_scores(tiny_cross_encoder_path, QUERY, DOCUMENTS), atol=1e-5)
    assert np.all((scores >= 0) & (scores <= 1)) and np.ptp(scores) > 0.05  # the scores really differ
    assert cross_encoder.num_labels == 1 and cross_encoder.model_id == str(tiny_cross_encoder_path.resolve())
    assert cross_encoder.score(QUERY, []).shape == (0,)


def test_score_many_shares_passes_and_counts_the_tokens_read(
    cross_encoder: CrossEncoder, tiny_cross_encoder_path: Path
) -> None:
    groups = [(QUERY, DOCUMENTS[:4]), ("vitamin d", []), ("tape sorting", DOCUMENTS[3:])]
    scored = cross_encoder.score_many(groups)
    assert [len(s.scores) for s in scored] == [4, 0, 4]
    for (query, documents), result in zip(groups, scored):
        np.testing.assert_allclose(result.scores, cross_encoder.score(query, documents), atol=1e-6)
    tokenizer = cross_encoder._tokenizer
    expected = sum(
        len(ids) for ids in tokenizer([QUERY] * 4, DOCUMENTS[:4], truncation=True, max_length=128)["input_ids"]
    )
    assert scored[0].tokens == expected and scored[1].tokens == 0
    with pytest.raises(TypeError, match="str and a sequence of str"):
        cross_encoder.score_many([(QUERY, "a bare string")])


def test_a_token_budget_per_pass_changes_the_passes_not_the_scores(
    cross_encoder: CrossEncoder, tiny_cross_encoder_path: Path
) -> None:
    budget = CrossEncoder(tiny_cross_encoder_path, batch_size=32, batch_tokens=40)  # the long pair alone is 128
    np.testing.assert_allclose(budget.score(QUERY, DOCUMENTS), cross_encoder.score(QUERY, DOCUMENTS), atol=1e-6)
    with pytest.raises(ValueError, match="batch_tokens"):
        CrossEncoder(tiny_cross_encoder_path, batch_tokens=0)


def test_long_pairs_are_cut_to_the_models_positions(tiny_cross_encoder_path: Path) -> None:
    long = ["wing " * 400, "drag " * 50]
    cut = CrossEncoder(tiny_cross_encoder_path, max_length=512)
    assert cut.max_length == 128  # the tiny model has 128 positions
    np.testing.assert_allclose(cut.score(QUERY, long), direct_scores(tiny_cross_encoder_path, QUERY, long), atol=1e-5)
    shorter = CrossEncoder(tiny_cross_encoder_path, max_length=16)
    assert shorter.score_many([(QUERY, long)])[0].tokens == 32
    np.testing.assert_allclose(
        shorter.score(QUERY, long), direct_scores(tiny_cross_encoder_path, QUERY, long, max_length=16), atol=1e-5
    )


def test_two_label_models_score_the_probability_of_the_last_label(tmp_path: Path) -> None:
    path = make_tiny_cross_encoder(tmp_path / "two", num_labels=2, seed=3)
    model = CrossEncoder(path)
    assert model.num_labels == 2
    np.testing.assert_allclose(model.score(QUERY, DOCUMENTS), direct_scores(path, QUERY, DOCUMENTS), atol=1e-5)


def test_models_that_are_not_cross_encoders_are_refused_at_load(tmp_path: Path, tiny_bert_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="3 labels; a cross-encoder must have 1"):
        CrossEncoder(make_tiny_cross_encoder(tmp_path / "three", num_labels=3))
    with pytest.raises(ModelLoadError, match="not a cross-encoder: the checkpoint lacks .*classifier"):
        CrossEncoder(tiny_bert_path)  # an encoder: no classification head
    with pytest.raises(ModelLoadError, match="cannot load cross-encoder"):
        CrossEncoder(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="batch_size"):
        CrossEncoder(tiny_bert_path, batch_size=0)


def test_concurrent_calls_get_their_own_scores(cross_encoder: CrossEncoder) -> None:
    expected = {i: cross_encoder.score(f"query {i}", DOCUMENTS) for i in range(4)}
    found: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        found[i] = cross_encoder.score(f"query {i}", DOCUMENTS)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        np.testing.assert_allclose(found[i], expected[i], atol=1e-6)
