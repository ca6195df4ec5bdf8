"""Token windows of long texts (experts.token_windows), with MiniLM's real fast tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experts import ChunkingError, Encoder, make_split_fn, split_passages, token_spans


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_path))


@pytest.fixture(scope="module")
def long_text(datasets: Path) -> str:
    with (datasets / "scifact" / "corpus.jsonl").open(encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for _, line in zip(range(12), handle)]
    return " ".join(texts)


def test_a_short_text_is_one_span_of_the_whole_text(tokenizer) -> None:
    assert token_spans(tokenizer, ["heat transfer in a boundary layer", ""], max_tokens=64, overlap=8) == [
        [(0, 33)],
        [(0, 0)],
    ]


def test_windows_fit_the_limit_overlap_and_cover_the_text(tokenizer, long_text: str) -> None:
    (spans,) = token_spans(tokenizer, [long_text], max_tokens=64, overlap=8)
    assert len(spans) > 10
    assert spans[0][0] == 0 and spans[-1][1] == len(long_text.rstrip())
    for (start, end), (next_start, _) in zip(spans, spans[1:]):
        assert start < next_start < end  # each window moves forward and overlaps the previous one
        shared = tokenizer(long_text[next_start:end], add_special_tokens=False)["input_ids"]
        assert 4 <= len(shared) <= 12  # about `overlap` tokens (whole words)
    for start, end in spans:
        # Embedded on its own, each window fits (special tokens included) and starts and ends on a word boundary.
        assert len(tokenizer(long_text[start:end])["input_ids"]) <= 64
        assert start == 0 or not (long_text[start - 1].isalnum() and long_text[start].isalnum())
        assert end == len(long_text) or not (long_text[end - 1].isalnum() and long_text[end].isalnum())


def test_a_word_longer_than_a_window_is_cut_at_tokens(tokenizer) -> None:
    text = "a " + "x" * 400 + " b"
    (spans,) = token_spans(tokenizer, [text], max_tokens=16, overlap=2)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(end > start for start, end in spans)


def test_counts_and_settings(tokenizer, long_text: str, tiny_bert_path: Path) -> None:
    ((_, tokens),) = split_passages(tokenizer, [long_text], max_tokens=64, overlap=8)
    assert tokens == len(tokenizer(long_text)["input_ids"])  # special tokens included, as the limit counts them
    with pytest.raises(ChunkingError, match=r"overlap must be an integer in \[0, 61\]"):
        token_spans(tokenizer, ["x"], max_tokens=64, overlap=62)
    with pytest.raises(ChunkingError, match="no room"):
        token_spans(tokenizer, ["x"], max_tokens=2, overlap=0)
    encoder = Encoder(tiny_bert_path, max_length=64)
    split = make_split_fn(encoder, overlap=8)  # max_tokens defaults to the encoder's document limit
    assert split([long_text]) == split_passages(tokenizer, [long_text], max_tokens=64, overlap=8)
    with pytest.raises(ChunkingError):
        make_split_fn(encoder, overlap=100)
