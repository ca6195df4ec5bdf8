from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experts import AdapterMismatchError, Encoder, ModelLoadError, UnknownExpertError

TEXTS = [
    "boundary layer transition on a flat plate",
    "a",
    "retrieval of information from large collections of documents by computer",
    "heat",
    "supersonic flow",
    "the quick brown fox jumps over the lazy dog " * 20,
]


def test_rows_are_unit_vectors_of_the_model_width(encoder: Encoder) -> None:
    vectors = encoder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_length_sorting_and_batching_keep_each_row_equal_to_embedding_it_alone(encoder: Encoder) -> None:
    together = encoder.embed(TEXTS, batch_size=3)
    alone = np.vstack([encoder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_max_length_truncates(encoder: Encoder) -> None:
    long_text = TEXTS[-1]
    prefix = " ".join(long_text.split()[:5])
    short = encoder.embed([long_text], max_length=7)  # [CLS] + 5 words + [SEP]
    np.testing.assert_allclose(short, encoder.embed([prefix]), atol=1e-5)
    assert not np.allclose(short, encoder.embed([long_text]), atol=1e-3)


def test_max_length_is_capped_by_the_model(tiny_bert_path: Path) -> None:
    assert Encoder(tiny_bert_path, max_length=10_000).max_length == 128


def test_empty_input_gives_an_empty_matrix(encoder: Encoder) -> None:
    assert encoder.embed([]).shape == (0, 32)


def test_fingerprint_identifies_the_weights(tiny_bert_path: Path, other_bert_path: Path) -> None:
    first, again = Encoder(tiny_bert_path), Encoder(tiny_bert_path)
    assert first.fingerprint == again.fingerprint
    assert Encoder(other_bert_path).fingerprint != first.fingerprint


def test_adapter_changes_embeddings_and_mixed_batch_matches_each_adapter(
    encoder: Encoder, adapter_a: Path, adapter_b: Path
) -> None:
    base = encoder.embed(TEXTS)
    encoder.add_adapter("a", adapter_a)
    encoder.add_adapter("b", adapter_b)
    assert encoder.adapters == ("a", "b")
    with_a = encoder.embed(TEXTS, expert="a")
    with_b = encoder.embed(TEXTS, expert="b")
    assert not np.allclose(with_a, base, atol=1e-3)
    assert not np.allclose(with_a, with_b, atol=1e-3)
    np.testing.assert_allclose(encoder.embed(TEXTS), base, atol=1e-5)  # adapters off again

    per_row = ["a", None, "b", "a", None, "b"]
    mixed = encoder.embed(TEXTS, expert=per_row, batch_size=4)
    expected = np.vstack([{None: base, "a": with_a, "b": with_b}[name][i] for i, name in enumerate(per_row)])
    np.testing.assert_allclose(mixed, expected, atol=1e-5)


def test_removing_adapters_restores_the_base_model(encoder: Encoder, adapter_a: Path, adapter_b: Path) -> None:
    base = encoder.embed(TEXTS)
    encoder.add_adapter("a", adapter_a)
    encoder.add_adapter("b", adapter_b)
    with_b = encoder.embed(TEXTS, expert="b")
    encoder.remove_adapter("a")
    np.testing.assert_allclose(encoder.embed(TEXTS, expert="b"), with_b, atol=1e-5)
    encoder.remove_adapter("b")
    assert encoder.adapters == ()
    np.testing.assert_allclose(encoder.embed(TEXTS), base, atol=1e-5)
    encoder.add_adapter("b", adapter_b)  # and can be loaded again after the last was removed
    np.testing.assert_allclose(encoder.embed(TEXTS, expert="b"), with_b, atol=1e-5)


def test_unknown_adapter_is_refused_with_the_loaded_names(encoder: Encoder, adapter_a: Path) -> None:
    encoder.add_adapter("a", adapter_a)
    with pytest.raises(UnknownExpertError, match=r"'lawx' is not loaded. Loaded adapters: \['a'\]"):
        encoder.embed(["x"], expert="lawx")
    with pytest.raises(KeyError):  # also a KeyError, for callers that catch that
        encoder.remove_adapter("lawx")


def test_adapter_for_another_base_is_refused_naming_the_sizes(encoder: Encoder, foreign_adapter: Path) -> None:
    with pytest.raises(AdapterMismatchError, match=r"size 48.*\(dim 32\) it is 32"):
        encoder.add_adapter("foreign", foreign_adapter)
    assert encoder.adapters == ()


def test_per_row_list_must_match_the_texts(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="2 entries for 3 texts"):
        encoder.embed(["a", "b", "c"], expert=[None, None])


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load base encoder"):
        Encoder(tmp_path / "nowhere")


def test_invalid_pooling_lists_the_valid_ones(tiny_bert_path: Path) -> None:
    with pytest.raises(ValueError, match="Valid pooling modes are: 'mean', 'cls'"):
        Encoder(tiny_bert_path, pooling="max")  # type: ignore[arg-type]


def test_length_buckets_and_grouping_leave_every_row_as_embedded_alone(
    tiny_bert_path: Path, adapter_a: Path, adapter_b: Path
) -> None:
    from experts.encoder import length_buckets

    order, lengths = np.arange(6), [40, 30, 12, 10, 9, 3]
    assert [list(c) for c in length_buckets(order, lengths, rows=4, tokens=64)] == [[0], [1, 2], [3, 4, 5]]
    assert [list(c) for c in length_buckets(order, lengths, rows=4, tokens=None)] == [[0, 1, 2, 3], [4, 5]]
    alone = Encoder(tiny_bert_path, max_length=64, batch_tokens=None, batch_size=1)
    bucketed = Encoder(tiny_bert_path, max_length=64, batch_tokens=16, batch_size=64, group_up_to=2)
    for encoder in (alone, bucketed):
        encoder.add_adapter("a", adapter_a)
        encoder.add_adapter("b", adapter_b)
    for rows in (["a", None] * 3, ["a", "b", "a", "b", "b", "a"], ["a", None, "b"] * 2):  # grouped, grouped, mixed
        np.testing.assert_allclose(bucketed.embed(TEXTS, expert=rows), alone.embed(TEXTS, expert=rows), atol=1e-5)
    with pytest.raises(ValueError, match="batch_tokens must be >= 1"):
        Encoder(tiny_bert_path, batch_tokens=0)


def test_bulk_base_passes_run_on_the_copy_beside_a_held_model_lock(tiny_bert_path: Path, adapter_a: Path) -> None:
    import threading

    shared = Encoder(tiny_bert_path)
    copied = Encoder(tiny_bert_path, bulk_copy=True)
    copied.add_adapter("a", adapter_a)
    texts = ["wing drag at high speed", "a compiler for algol", "heat transfer in a boundary layer"] * 3
    expected = shared.embed(texts)
    # While another thread holds the shared model (a search's pass), a bulk base embed still completes.
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with copied._lock.hold():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    result: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: result.append(copied.embed(texts, bulk=True)))
    worker.start()
    worker.join(30)
    finished_while_held = not worker.is_alive()
    release.set()
    holder.join()
    worker.join()
    assert finished_while_held
    np.testing.assert_allclose(result[0], expected, atol=1e-6)  # the copy is the same model, unhooked
    # Adapter rows still go through the shared model (the copy has no adapters), with the same vectors.
    np.testing.assert_allclose(copied.embed(texts, expert="a", bulk=True), copied.embed(texts, expert="a"), atol=1e-6)
    assert not np.allclose(copied.embed(texts[:1], expert="a"), expected[:1])
