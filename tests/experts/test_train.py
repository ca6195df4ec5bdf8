"""The LoRA InfoNCE trainer on the tiny random BERT: it learns, it is deterministic, its adapter loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from experts import Encoder, ModelLoadError, TrainConfig, TrainingError, TrainingPair, train_adapter
from experts.train import batch_schedule, exact_search, fused_scores, info_nce
from index import fuse_dense_lexical

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "wing drag shock plate heat layer compiler storage sort tape query index vitamin protein cell gene".split()


QUERY_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
)


def toy_problem(encoder: Encoder) -> tuple[list[TrainingPair], np.ndarray]:
    """An arbitrary code book the adapter must learn: query word i -> the base vector of document word i.

    The targets are base-encoder outputs, so an adapter can reach them; the base
    itself maps the query words near chance.
    """
    documents = encoder.embed(WORDS)
    pairs = []
    for row, word in enumerate(QUERY_WORDS):
        pairs.append(TrainingPair(word, (row,), "title"))
        pairs.append(TrainingPair(f"the {word}", (row,), "span"))
    return pairs, documents


FAST = TrainConfig(
    steps=60, batch_size=8, lr=3e-2, temperature=0.02, rank=8, alpha=16, dropout=0.0, query_max_length=16
)


def accuracy(encoder: Encoder, pairs: list[TrainingPair], documents: np.ndarray, expert: str | None) -> float:
    queries = encoder.embed([p.query for p in pairs], expert=expert)
    return float(np.mean(np.argmax(queries @ documents.T, axis=1) == [p.positives[0] for p in pairs]))


def test_training_lowers_the_loss_and_the_adapter_changes_only_query_embeddings(
    tmp_path: Path, encoder: Encoder
) -> None:
    pairs, documents = toy_problem(encoder)
    report = train_adapter(encoder, pairs, documents, tmp_path / "adapter", config=FAST, progress=False)
    assert report.mode == "full_softmax" and report.pairs == 32 and report.documents == 16
    assert len(report.losses) == 60 and report.final_loss < 0.5 * report.first_loss
    before = accuracy(encoder, pairs, documents, None)
    base_vectors = encoder.embed(["the drag of it"])
    encoder.add_adapter("toy", tmp_path / "adapter")
    assert accuracy(encoder, pairs, documents, "toy") > before + 0.4
    np.testing.assert_array_equal(encoder.embed(["the drag of it"]), base_vectors)  # base (document side) unchanged
    assert not np.allclose(encoder.embed(["the drag of it"], expert="toy"), base_vectors)


def test_same_seed_same_adapter_other_seed_other_adapter(tmp_path: Path, encoder: Encoder) -> None:
    pairs, documents = toy_problem(encoder)
    config = TrainConfig(**{**FAST.as_dict(), "steps": 6})
    steps: list[tuple[int, int]] = []
    for run, seed in (("a", 1), ("b", 1), ("c", 2)):
        train_adapter(
            encoder,
            pairs,
            documents,
            tmp_path / run,
            config=TrainConfig(**{**config.as_dict(), "seed": seed}),
            progress=False,
            on_step=(lambda done, total: steps.append((done, total))) if run == "b" else None,
        )
    a, b, c = (load_file(tmp_path / run / "adapter_model.safetensors") for run in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)  # on_step changes nothing
    assert any(not torch.equal(a[key], c[key]) for key in a)
    assert steps == [(done, 6) for done in range(1, 7)]


def test_an_exception_from_on_step_ends_the_training_and_saves_nothing(tmp_path: Path, encoder: Encoder) -> None:
    pairs, documents = toy_problem(encoder)

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(encoder, pairs, documents, tmp_path / "out", config=FAST, progress=False, on_step=stop)
    assert not (tmp_path / "out").exists()


def test_a_run_stopped_after_a_checkpoint_resumes_to_the_same_adapter(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("experts.train.CHECKPOINT_EVERY", 10)
    pairs, documents = toy_problem(encoder)
    config = TrainConfig(**{**FAST.as_dict(), "steps": 40, "dropout": 0.1})  # dropout: the RNG state matters
    whole = train_adapter(encoder, pairs, documents, tmp_path / "whole", config=config, progress=False)
    checkpoint = tmp_path / "work" / "train.ckpt"

    def killed(done: int, total: int) -> None:
        if done == 27:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(encoder, pairs, documents, tmp_path / "out", config=config, progress=False, on_step=killed,
                      checkpoint=checkpoint)  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert torch.load(checkpoint, weights_only=True)["step"] == 20  # the last one before the kill
    steps: list[int] = []
    resumed = train_adapter(encoder, pairs, documents, tmp_path / "out", config=config, progress=False,
                            on_step=lambda done, total: steps.append(done), checkpoint=checkpoint)  # fmt: skip
    assert steps == list(range(21, 41)) and resumed.losses == whole.losses
    a, b = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("whole", "out"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)

    # A checkpoint of other inputs (here another seed) is ignored: that run starts from step 1.
    steps.clear()
    other = TrainConfig(**{**config.as_dict(), "seed": 5})
    train_adapter(encoder, pairs, documents, tmp_path / "other", config=other, progress=False,
                  on_step=lambda done, total: steps.append(done), checkpoint=checkpoint)  # fmt: skip
    assert steps[0] == 1 and len(steps) == 40
    checkpoint.write_bytes(b"torn")  # unreadable: ignored too
    steps.clear()
    train_adapter(encoder, pairs, documents, tmp_path / "again", config=config, progress=False,
                  on_step=lambda done, total: steps.append(done), checkpoint=checkpoint)  # fmt: skip
    assert steps[0] == 1


def test_in_batch_mode_with_mined_hard_negatives_also_learns(tmp_path: Path, encoder: Encoder) -> None:
    pairs, documents = toy_problem(encoder)
    config = TrainConfig(**{**FAST.as_dict(), "full_softmax_limit": 0, "hard_negatives": 3})
    report = train_adapter(encoder, pairs, documents, tmp_path / "adapter", config=config, progress=False)
    assert report.mode == "in_batch" and report.final_loss < 0.6 * report.first_loss


def test_fused_scores_rank_as_the_weighted_hybrid_fusion_does() -> None:
    rng = np.random.default_rng(0)
    dense = rng.uniform(-0.2, 0.9, size=(3, 40)).astype(np.float32)
    lexical_rows = [rng.choice(40, size=12, replace=False) for _ in range(3)]
    lexical_scores = [rng.uniform(1.0, 9.0, size=12).astype(np.float32) for _ in range(3)]
    bonus = torch.zeros((3, 40))
    for line, (rows, scores) in enumerate(zip(lexical_rows, lexical_scores, strict=True)):
        bonus[line, rows] = torch.from_numpy((scores - scores.min()) / (scores.max() - scores.min()))
    for weight in (0.3, 0.5, 0.8):
        fused = fused_scores(torch.from_numpy(dense), bonus, weight=weight, candidates=40)
        hybrid = fuse_dense_lexical(
            (dense, np.tile(np.arange(40), (3, 1))),
            (np.stack(lexical_scores), np.stack(lexical_rows)),
            k=40,
            weight=weight,
        )
        assert torch.argsort(fused, dim=1, descending=True).tolist() == hybrid.ids.tolist()


def toy_lexical(pairs: list[TrainingPair]):
    """BM25 stand-in over the toy documents: a 'title' query finds its document on top, a 'span' query nothing."""
    answers = {p.query: p.positives[0] for p in pairs if p.kind == "title"}

    def search(queries, k):
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for line, query in enumerate(queries):
            if query in answers:
                rows[line, 0], scores[line, 0] = answers[query], 5.0
        return scores, rows

    return search


@pytest.mark.parametrize("full_softmax_limit", [50_000, 0])
def test_training_on_the_fused_score_learns_what_the_lexical_side_misses(
    tmp_path: Path, encoder: Encoder, full_softmax_limit: int
) -> None:
    pairs, documents = toy_problem(encoder)
    config = TrainConfig(**{**FAST.as_dict(), "fusion_weight": 0.5, "full_softmax_limit": full_softmax_limit})
    report = train_adapter(
        encoder,
        pairs,
        documents,
        tmp_path / "adapter",
        config=config,
        lexical_search=toy_lexical(pairs),
        progress=False,
    )
    assert report.final_loss < 0.5 * report.first_loss
    spans = [p for p in pairs if p.kind == "span"]  # the lexical side finds none of these: the adapter must
    before = accuracy(encoder, spans, documents, None)
    encoder.add_adapter("fused", tmp_path / "adapter")
    assert accuracy(encoder, spans, documents, "fused") > before + 0.4


def test_info_nce_sums_the_mass_of_several_positives() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, True]])
    probabilities = torch.softmax(scores, dim=1)
    expected = -(torch.log(probabilities[0, :2].sum()) + torch.log(probabilities[1, 2])) / 2
    assert float(info_nce(scores, mask)) == pytest.approx(float(expected))


def test_schedule_uses_every_pair_before_repeating_and_exact_search_ranks() -> None:
    schedule = batch_schedule(10, steps=3, batch_size=4, seed=0)
    flat = np.concatenate(schedule)
    assert [len(b) for b in schedule] == [4, 4, 4] and sorted(flat[:10].tolist()) == list(range(10))
    documents = np.eye(4, dtype=np.float32)
    assert exact_search(documents)(np.array([[0.1, 0.9, 0.5, 0.0]], dtype=np.float32), 2).tolist() == [[1, 2]]


def test_bad_inputs_are_refused_with_reasons(tmp_path: Path, encoder: Encoder) -> None:
    pairs, documents = toy_problem(encoder)
    with pytest.raises(TrainingError, match="no training pairs"):
        train_adapter(encoder, [], documents, tmp_path / "a", config=FAST)
    with pytest.raises(TrainingError, match="names document row 15, but the matrix has 4 rows"):
        train_adapter(encoder, pairs, documents[:4], tmp_path / "a", config=FAST)
    with pytest.raises(TrainingError, match="dim 8 but the base model"):
        train_adapter(encoder, pairs, np.ones((16, 8), dtype=np.float32), tmp_path / "a", config=FAST)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="hard_negatives"):
        TrainConfig(hard_negatives=0)
    with pytest.raises(ValueError, match=r"fusion_weight must be in \(0, 1\]"):
        TrainConfig(fusion_weight=0.0)
    with pytest.raises(TrainingError, match="no lexical_search"):
        train_adapter(encoder, pairs, documents, tmp_path / "a", config=TrainConfig(fusion_weight=0.5))


def test_an_encoder_whose_weights_changed_on_disk_is_refused(tmp_path: Path, encoder: Encoder, monkeypatch) -> None:
    pairs, documents = toy_problem(encoder)
    monkeypatch.setattr(encoder, "fingerprint", "0" * 64)
    with pytest.raises(ModelLoadError, match="no longer matches"):
        train_adapter(encoder, pairs, documents, tmp_path / "a", config=FAST)


def test_the_frozen_prefix_pass_equals_the_whole_pass_and_trains_the_same_layers(
    tmp_path: Path, encoder: Encoder
) -> None:
    from experts.train import _embed, _training_copy
    from experts.train_prefix import frozen_prefix

    model, tokenizer, pooling, _ = _training_copy(encoder, None)
    model.eval()
    layers = len(model.encoder.layer)
    prefix = frozen_prefix(model, layers - 1)
    assert prefix is not None and frozen_prefix(model, 0) is None and frozen_prefix(model, layers) is None
    texts = ["wing drag", "the heat of a long boundary layer of a plate", "sort"]
    prefix.compute(tokenizer, tokenizer(texts, truncation=True, max_length=16)["input_ids"])
    with torch.inference_mode():
        whole = _embed(model, tokenizer, texts, max_length=16, pooling=pooling)
        resumed = _embed(model, tokenizer, texts, max_length=16, pooling=pooling, prefix=prefix)
    torch.testing.assert_close(resumed, whole, rtol=1e-5, atol=1e-6)
    assert len(model.encoder.layer) == layers  # the stack is whole again

    pairs, documents = toy_problem(encoder)
    config = TrainConfig(**{**FAST.as_dict(), "top_layers": 1})
    before = accuracy(encoder, pairs, documents, None)
    for run, flag in (("whole", False), ("prefix", True)):
        train_adapter(
            encoder,
            pairs,
            documents,
            tmp_path / run,
            config=TrainConfig(**{**config.as_dict(), "frozen_prefix": flag}),
            progress=False,
        )
    whole_weights, prefix_weights = (
        load_file(tmp_path / run / "adapter_model.safetensors") for run in ("whole", "prefix")
    )
    assert whole_weights.keys() == prefix_weights.keys()  # LoRA on the same (top) layer, saved under its own name
    assert all(f"layer.{layers - 1}." in key for key in prefix_weights)
    encoder.add_adapter("prefix", tmp_path / "prefix")
    assert accuracy(encoder, pairs, documents, "prefix") > before + 0.3


def test_training_beside_an_auto_encoder_holds_a_core_for_its_steps(tmp_path: Path, tiny_bert_path: Path) -> None:
    from tests.experts.test_torch_threads import Host

    encoder = Encoder(tiny_bert_path, max_length=64, batch_size=4, threads="auto")
    host = Host()
    encoder.thread_choice = host.choice(cores=2, interval_s=0.0)
    pairs, documents = toy_problem(encoder)
    during: list[int] = []
    config = TrainConfig(**{**FAST.as_dict(), "steps": 3})
    train_adapter(
        encoder, pairs, documents, tmp_path / "a", config=config, progress=False,
        on_step=lambda done, total: during.append(encoder.thread_choice.threads()),  # type: ignore[union-attr]
    )  # fmt: skip
    assert during == [1, 1, 1]  # a quiet 2-core host, one core held by the training: the passes get one thread
    assert encoder.thread_choice.threads() == 2
