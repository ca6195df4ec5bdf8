"""Adapter passes resumed from the base pass's hidden state: the same vectors as a whole pass, fewer layers run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from experts import Encoder, TrainConfig, TrainingPair, train_adapter
from experts.layer_resume import LayerResume, first_layer
from experts.torch_threads import ThreadChoice

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["wing drag at high speed", "heat", "the sort of tape storage a compiler needs for its query index", "cell"]


def adapter(encoder: Encoder, out: Path, top_layers: int | None) -> Path:
    documents = encoder.embed(["drag", "heat", "tape", "cell"])
    pairs = [TrainingPair(text, (row,), "span") for row, text in enumerate(TEXTS)]
    config = TrainConfig(steps=3, batch_size=4, lr=5e-2, dropout=0.0, top_layers=top_layers, query_max_length=32)
    train_adapter(encoder, pairs, documents, out, config=config, progress=False)
    return out


def layer_calls(encoder: Encoder) -> list[int]:
    """Counts of forward calls of each encoder layer, kept up to date by hooks."""
    calls = [0] * len(encoder.base_module.encoder.layer)
    for index, layer in enumerate(encoder.base_module.encoder.layer):
        layer.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    return calls


@pytest.fixture(scope="module")
def top_and_full(tmp_path_factory: pytest.TempPathFactory, tiny_bert_path: Path) -> dict[str, Path]:
    """Two trained adapters: "top" on the last layer only, "full" on every layer."""
    trainer, folder = Encoder(tiny_bert_path, max_length=64, batch_size=4), tmp_path_factory.mktemp("resume")
    return {"top": adapter(trainer, folder / "top", 1), "full": adapter(trainer, folder / "full", None)}


def with_both(tiny_bert_path: Path, adapters: dict[str, Path], **options) -> Encoder:
    encoder = Encoder(tiny_bert_path, max_length=64, **{"batch_size": 4, **options})
    for name, path in adapters.items():
        encoder.add_adapter(name, path)
    return encoder


def test_first_layer_reads_the_lowest_layer_number_and_zero_outside_the_stack() -> None:
    assert first_layer(["encoder.layer.4.attention.self.query", "encoder.layer.5.output.dense"]) == 4
    assert first_layer(["encoder.layer.1.output.dense", "pooler.dense"]) == 0
    assert first_layer([]) == 0


def test_a_top_layer_adapter_pass_after_a_base_pass_runs_only_the_top_and_gives_the_same_vectors(
    tmp_path: Path, tiny_bert_path: Path
) -> None:
    trainer = Encoder(tiny_bert_path, max_length=64, batch_size=4)
    top = adapter(trainer, tmp_path / "top", top_layers=1)
    whole = Encoder(tiny_bert_path, max_length=64, batch_size=4)
    whole.add_adapter("top", top)
    expected = whole.embed(TEXTS, expert="top")  # no base pass before it: every layer runs

    encoder = Encoder(tiny_bert_path, max_length=64, batch_size=3)  # other batches than the base pass's
    encoder.add_adapter("top", top)
    calls = layer_calls(encoder)
    base = encoder.embed(TEXTS)
    assert calls == [2, 2]  # two passes of up to 3 rows
    resumed = encoder.embed(list(reversed(TEXTS)), expert="top")[::-1]
    assert calls == [2, 4], "the adapter pass ran layer 0 again"
    np.testing.assert_allclose(resumed, expected, atol=1e-5)
    assert not np.allclose(resumed, base)
    assert len(encoder.base_module.encoder.layer) == 2  # the stack is whole again after the pass


def test_whole_passes_where_a_state_is_missing_or_an_adapter_changes_every_layer(
    tiny_bert_path: Path, top_and_full: dict[str, Path]
) -> None:
    reference = with_both(tiny_bert_path, top_and_full)
    expected_top = reference.embed(TEXTS, expert="top")
    expected_full = reference.embed(TEXTS, expert="full")

    encoder = with_both(tiny_bert_path, top_and_full)
    calls = layer_calls(encoder)
    encoder.embed(TEXTS[:2])  # only two of the texts are seen by a base pass
    np.testing.assert_allclose(encoder.embed(TEXTS, expert="top"), expected_top, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(TEXTS, expert="full"), expected_full, atol=1e-5)
    mixed = encoder.embed(TEXTS[:2], expert=["top", "full"])
    np.testing.assert_allclose(mixed, [expected_top[0], expected_full[1]], atol=1e-5)
    # base, top (one text unseen: whole), full (whole), mixed: one pass per adapter, the top one resumed
    assert calls == [4, 5]
    encoder.embed(TEXTS[:2], expert="top")
    assert calls == [4, 6]  # both seen by the base pass: resumed
    encoder.embed(TEXTS[2:], bulk=True)  # bulk passes keep no state
    encoder.embed(TEXTS[2:], expert="top")
    assert calls[0] == 6


@pytest.mark.parametrize(("first", "second"), [("top", None), ("full", None), ("full", "top"), ("top", "top")])
def test_passes_of_two_threads_at_once_each_give_the_vectors_they_give_alone(
    tiny_bert_path: Path, top_and_full: dict[str, Path], first: str | None, second: str | None
) -> None:
    """A resumed pass, a whole one with another adapter and a base pass that keeps states, really at once."""
    reference = with_both(tiny_bert_path, top_and_full)
    other = ["a compiler for algol", "boundary layer suction", "tape", "retrieval of documents by subject"]
    jobs = {0: (TEXTS, first), 1: (other, second)}
    expected = {i: reference.embed(texts, expert=name) for i, (texts, name) in jobs.items()}

    encoder = with_both(tiny_bert_path, top_and_full, threads="auto")
    encoder.thread_choice = ThreadChoice(host_busy=lambda: 0.0, own_cpu=lambda: 0.0, clock=lambda: 0.0, cores=2)
    encoder.embed(TEXTS + other)  # a base pass keeps every text's state: "top" passes resume
    calls = layer_calls(encoder)
    both_working, both_inside = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    waited = threading.local()

    def meet(module, args) -> None:  # in the top layer, which every pass runs: both passes are under way
        if not getattr(waited, "done", False):
            waited.done = True
            both_inside.wait()

    encoder.base_module.encoder.layer[1].register_forward_pre_hook(meet)
    got: dict[int, np.ndarray] = {}

    def caller(i: int) -> None:
        texts, name = jobs[i]
        with encoder.working():
            both_working.wait()
            got[i] = encoder.embed(texts, expert=name)

    callers = [threading.Thread(target=caller, args=(i,)) for i in jobs]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=60)
    for i in jobs:
        np.testing.assert_allclose(got[i], expected[i], atol=1e-5)
    resumed = sum(name == "top" for _, name in jobs.values())
    assert calls == [2 - resumed, 2], "a resumed pass ran layer 0, or a whole one skipped it"
    assert len(encoder.base_module.encoder.layer) == 2 and not both_inside.broken


def test_states_are_handed_out_only_when_every_text_of_the_pass_is_still_kept(tiny_bert_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(tiny_bert_path).eval(), AutoTokenizer.from_pretrained(tiny_bert_path)
    resume = LayerResume(model, size=2)

    def base_pass(texts: list[str]) -> None:
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.inference_mode(), resume.capturing(texts, 64, 1, batch["attention_mask"]):
            model(**batch)

    base_pass(TEXTS[:2])
    kept = resume.kept(TEXTS[:2], 64, 1)
    assert kept is not None and [len(state) for state in kept] == [
        len(tokenizer(text)["input_ids"]) for text in TEXTS[:2]
    ]
    assert resume.kept(TEXTS[:2], 32, 1) is None and resume.kept(TEXTS[:2], 64, 0) is None  # other limit, layer
    base_pass(TEXTS[2:3])  # a third text evicts the oldest: a pass over the first two runs whole
    assert resume.kept(TEXTS[:2], 64, 1) is None and resume.kept(TEXTS[1:3], 64, 1) is not None
