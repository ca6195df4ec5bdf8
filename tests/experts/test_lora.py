"""The encoder's own LoRA application against ``peft.PeftModel``, which it replaced for serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experts import AdapterMismatchError, Encoder

TEXTS = [
    "boundary layer transition on a flat plate",
    "a",
    "retrieval of information from large collections of documents by computer",
    "heat",
    "supersonic flow past a slender cone at zero incidence",
]


def save_peft_adapter(base_path: Path, out: Path, *, seed: int, **options) -> Path:
    """An adapter made and saved by plain PEFT, with random non-zero A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    options = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value", "dense"], **options}
    torch.manual_seed(seed)
    model = get_peft_model(AutoModel.from_pretrained(base_path), LoraConfig(init_lora_weights=False, **options))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three PEFT adapters that differ in rank, scaling rule and targets (mixed batches must pad them)."""
    root = tmp_path_factory.mktemp("peft-adapters")
    return {
        "plain": save_peft_adapter(tiny_bert_path, root / "plain", seed=1),
        "rslora": save_peft_adapter(
            tiny_bert_path,
            root / "rslora",
            seed=2,
            r=8,
            lora_alpha=16,
            use_rslora=True,
            alpha_pattern={"value": 4},
            target_modules=["query", "key", "value", "dense"],
        ),
        "attention": save_peft_adapter(
            tiny_bert_path, root / "attention", seed=3, r=2, target_modules=["query", "key"]
        ),
    }


def peft_embed(tiny_bert_path: Path, adapters: dict[str, Path], rows: list[str | None]) -> np.ndarray:
    """The reference: PEFT's own model, one forward over all rows (``adapter_names`` when they differ), mean-pooled."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_path)
    names = list(adapters)
    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_bert_path), str(adapters[names[0]]), adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    model.eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        if set(rows) == {None}:
            with model.disable_adapter():
                hidden = model(**batch).last_hidden_state
        elif len(set(rows)) == 1:
            model.set_adapter(rows[0])
            hidden = model(**batch).last_hidden_state
        else:
            hidden = model(
                **batch, adapter_names=["__base__" if row is None else row for row in rows]
            ).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.fixture()
def loaded(tiny_bert_path: Path, adapters: dict[str, Path]) -> Encoder:
    encoder = Encoder(tiny_bert_path, max_length=64, batch_size=8)
    for name, path in adapters.items():
        encoder.add_adapter(name, path)
    return encoder


@pytest.mark.parametrize("name", ["plain", "rslora", "attention"])
def test_one_adapter_gives_pefts_embeddings(
    tiny_bert_path: Path, adapters: dict[str, Path], loaded: Encoder, name: str
) -> None:
    ours = loaded.embed(TEXTS, expert=name)
    np.testing.assert_allclose(ours, peft_embed(tiny_bert_path, adapters, [name] * len(TEXTS)), atol=1e-5)
    assert not np.allclose(ours, loaded.embed(TEXTS), atol=1e-3)  # the adapter really acts


def test_a_mixed_batch_gives_pefts_mixed_batch(
    tiny_bert_path: Path, adapters: dict[str, Path], loaded: Encoder
) -> None:
    rows = ["rslora", None, "plain", "attention", "rslora"]
    np.testing.assert_allclose(loaded.embed(TEXTS, expert=rows), peft_embed(tiny_bert_path, adapters, rows), atol=1e-5)
    every_row_an_adapter = ["plain", "attention", "plain", "rslora", "attention"]
    np.testing.assert_allclose(
        loaded.embed(TEXTS, expert=every_row_an_adapter),
        peft_embed(tiny_bert_path, adapters, every_row_an_adapter),
        atol=1e-5,
    )


def test_the_base_pass_ignores_loaded_adapters(
    tiny_bert_path: Path, adapters: dict[str, Path], loaded: Encoder
) -> None:
    plain = Encoder(tiny_bert_path, max_length=64).embed(TEXTS)
    np.testing.assert_array_equal(loaded.embed(TEXTS), plain)  # the very same arithmetic, not just close
    np.testing.assert_allclose(plain, peft_embed(tiny_bert_path, adapters, [None] * len(TEXTS)), atol=1e-5)


def test_removing_an_adapter_unhooks_only_what_it_alone_used(
    tiny_bert_path: Path, adapters: dict[str, Path], loaded: Encoder
) -> None:
    with_plain = loaded.embed(TEXTS, expert="plain")
    loaded.remove_adapter("rslora")
    loaded.remove_adapter("attention")  # "key" layers are now unhooked, "plain" still acts
    np.testing.assert_allclose(loaded.embed(TEXTS, expert="plain"), with_plain, atol=1e-6)
    loaded.remove_adapter("plain")
    # No linear layer keeps a LoRA hook (the embeddings keep the resumed passes' hook: experts.layer_resume).
    hooked = [m for m in loaded.base_module.modules() if isinstance(m, torch.nn.Linear) and m._forward_hooks]
    assert hooked == []
    np.testing.assert_array_equal(loaded.embed(TEXTS), Encoder(tiny_bert_path, max_length=64).embed(TEXTS))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"bias": "lora_only"}, "bias='lora_only'"),
        ({"modules_to_save": ["pooler"]}, "modules_to_save"),
    ],
)
def test_lora_variants_it_would_serve_wrong_are_refused(
    tiny_bert_path: Path, tmp_path: Path, options: dict, named: str
) -> None:
    path = save_peft_adapter(tiny_bert_path, tmp_path / "variant", seed=4, **options)
    encoder = Encoder(tiny_bert_path)
    with pytest.raises(AdapterMismatchError, match=rf"uses .*{named}.*only plain LoRA"):
        encoder.add_adapter("variant", path)
    assert encoder.adapters == ()


def test_the_base_vector_cache_returns_the_same_rows_and_stays_bounded(
    tiny_bert_path: Path, adapters: dict[str, Path]
) -> None:
    encoder = Encoder(tiny_bert_path, max_length=64, cache_size=3)
    encoder.add_adapter("plain", adapters["plain"])
    fresh = encoder.embed(TEXTS)
    first = encoder.embed(TEXTS, cache=True)
    np.testing.assert_allclose(first, fresh, atol=1e-6)
    assert len(encoder._cache) == 3  # the three most recent texts only
    again = encoder.embed(TEXTS[2:], cache=True)  # all three are hits
    np.testing.assert_array_equal(again, first[2:])
    assert set(encoder._cache) == {(text, 64) for text in TEXTS[2:]}
    short = encoder.embed(TEXTS[2:3], cache=True, max_length=4)  # another token limit is another key
    assert not np.allclose(short, first[2:3], atol=1e-3)
    mixed = encoder.embed(TEXTS[:2], expert=["plain", None], cache=True)  # adapter rows never come from the cache
    np.testing.assert_allclose(mixed[0], encoder.embed(TEXTS[:1], expert="plain")[0], atol=1e-6)
    assert ("boundary layer transition on a flat plate", 64) not in encoder._cache
    with pytest.raises(ValueError, match="cache_size must be >= 0"):
        Encoder(tiny_bert_path, cache_size=-1)
