"""The int8 encoder backends: the real MiniLM, quantised, against itself at fp32 on real collection texts.

Bounds come from ``bench/quantization.py variants`` (docs/benchmarks.md, section 9):
on 48 scifact abstracts and 64 cranfield queries, ``int8`` kept a cosine to fp32
of >= 0.982 per row (mean 0.988-0.992), ``int8-full`` >= 0.962 (mean 0.977-0.983);
the asserted bounds leave a little room below those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experts import BACKENDS, Encoder, resolve_model
from experts.labelled import read_queries
from experts.quantization import FP32_LAYERS, check_backend, is_quantized
from index import Document, read_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(datasets: Path) -> list[str]:
    """24 cranfield queries and 8 scifact abstracts: short and long rows in one batch."""
    queries = list(read_queries(datasets / "cranfield" / "queries.jsonl").values())[:24]
    documents = []
    for _, item in read_corpus(datasets / "scifact" / "corpus.jsonl"):
        if isinstance(item, Document):
            documents.append(item.passage())
        if len(documents) == 8:
            break
    return queries + documents


@pytest.fixture(scope="module")
def fp32() -> Encoder:
    return Encoder(threads=1, max_length=128)


@pytest.fixture(scope="module")
def int8() -> Encoder:
    return Encoder(threads=1, max_length=128, backend="int8")


@pytest.fixture(scope="module")
def minilm_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random rank-8 LoRA (query, value, dense layers) on the real MiniLM, saved by plain PEFT.

    ``B`` is scaled so the adapter moves the vectors about as much as a trained
    expert's does (a cosine of ~0.9 to the base vector), not to random noise.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(5)
    model = get_peft_model(
        AutoModel.from_pretrained(resolve_model(None)[1]),
        LoraConfig(r=8, lora_alpha=32, target_modules=["query", "value", "dense"], init_lora_weights=False),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.15)
    out = tmp_path_factory.mktemp("minilm-adapter")
    model.save_pretrained(out)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_loads_the_real_minilm_offline_and_quantises_all_but_the_ffn_outputs(
    int8: Encoder, texts: list[str]
) -> None:
    vectors = int8.embed(texts)
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert is_quantized(int8.base_module)
    linear = {name for name, module in int8.base_module.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linear and all(FP32_LAYERS.search(name) for name in linear)  # only the FFN outputs stay fp32


@pytest.mark.parametrize(("backend", "least", "mean"), [("int8", 0.975, 0.985), ("int8-full", 0.94, 0.97)])
def test_int8_vectors_are_close_to_fp32(
    fp32: Encoder, texts: list[str], backend: str, least: float, mean: float
) -> None:
    quantized = Encoder(threads=1, max_length=128, backend=backend)
    cos = _cosines(quantized.embed(texts), fp32.embed(texts))
    assert cos.min() > least, cos
    assert cos.mean() > mean, cos
    assert not np.allclose(cos, 1.0, atol=1e-4)  # it really is quantised


def test_fingerprint_is_the_fp32_weights_one(fp32: Encoder, int8: Encoder) -> None:
    assert int8.fingerprint == fp32.fingerprint
    assert int8.model_id == fp32.model_id and int8.dim == fp32.dim


def test_adapter_on_int8_changes_the_output_as_on_fp32(
    fp32: Encoder, int8: Encoder, minilm_adapter: Path, texts: list[str]
) -> None:
    fp32.add_adapter("lora", minilm_adapter)
    int8.add_adapter("lora", minilm_adapter)
    try:
        # hooked modules are the quantised layers (fp32 only where the backend keeps them)
        quantized_targets = [
            name for name in int8._lora._hooks if not isinstance(int8._lora._modules[name], torch.nn.Linear)
        ]
        assert quantized_targets
        base8, base32 = int8.embed(texts), fp32.embed(texts)
        with8, with32 = int8.embed(texts, expert="lora"), fp32.embed(texts, expert="lora")
        mixed8 = int8.embed(texts, expert=["lora" if i % 2 else None for i in range(len(texts))])
    finally:
        fp32.remove_adapter("lora")
        int8.remove_adapter("lora")
    # The adapter moves the fp32 vectors well beyond int8's own error ...
    assert (1 - _cosines(with32, base32)).mean() > 5 * (1 - _cosines(base8, base32)).mean()
    # ... and int8 + adapter lands as close to fp32 + adapter as int8 base does to fp32 base,
    # nearer to it than to either base vector: the adapter's change survives quantisation.
    adapted, plain = _cosines(with8, with32), _cosines(base8, base32)
    assert adapted.mean() > plain.mean() - 0.005 and adapted.min() > 0.975
    assert (adapted > _cosines(with8, base32)).all() and (adapted > _cosines(with8, base8)).all()
    # Per-row adapters work on int8 too. Not to 1e-5 as at fp32: dynamic quantisation takes one
    # activation scale per tensor, i.e. per pass, so a row's vector depends a little on its batch.
    assert (_cosines(mixed8[1::2], with8[1::2]) > _cosines(mixed8[1::2], base8[1::2])).all()
    assert (_cosines(mixed8[0::2], base8[0::2]) > _cosines(mixed8[0::2], with8[0::2])).all()
    assert _cosines(mixed8, np.where(np.arange(len(texts))[:, None] % 2 == 1, with8, base8)).min() > 0.98
    np.testing.assert_allclose(int8.embed(texts), base8, atol=1e-6)  # removed: back to the int8 base


def test_an_invalid_backend_is_refused_with_the_valid_ones_listed(tiny_bert_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"Invalid encoder backend 'fp16'\. Valid backends are: 'torch', 'int8', 'int8-full'"
    ):
        Encoder(tiny_bert_path, backend="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU only"):
        check_backend("int8", device="cuda")
    assert BACKENDS == ("torch", "int8", "int8-full")


def test_tiny_model_int8_keeps_the_fingerprint_and_takes_adapters(tiny_bert_path: Path, adapter_a: Path) -> None:
    plain, quantized = Encoder(tiny_bert_path), Encoder(tiny_bert_path, backend="int8-full")
    assert quantized.fingerprint == plain.fingerprint
    assert not is_quantized(plain.base_module) and is_quantized(quantized.base_module)
    quantized.add_adapter("a", adapter_a)
    base = quantized.embed(["boundary layer transition"])
    assert not np.allclose(quantized.embed(["boundary layer transition"], expert="a"), base, atol=1e-3)
