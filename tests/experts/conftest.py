from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experts import Encoder


def save_random_adapter(base_path: Path, out: Path, *, seed: int, rank: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) B, so it changes the embeddings, saved by plain PEFT."""
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


@pytest.fixture()
def encoder(tiny_bert_path: Path) -> Encoder:
    return Encoder(tiny_bert_path, max_length=64, batch_size=4)
