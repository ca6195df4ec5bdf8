"""Stand-in experts for the speed and memory benchmarks: random LoRA adapters and small indexes.

Trained adapters are not needed to time a forward pass, but *untrained* ones
are no good either: the service skips the adapter pass for an adapter that
equals the base model (``LoadedExpert.adapter is None``). So the adapters here
have the default recipe's shape (rank 8, alpha 32, query/key/value/dense) with
small random ``B`` matrices, and their experts are marked trained, so every
routed query pays for the second pass exactly as with a real trained expert.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.harness import COLLECTIONS
from experts import (
    ADAPTER_DIR,
    Encoder,
    ExpertDir,
    IndexSection,
    PilotsSection,
    adapter_weights_file,
    create_expert,
    new_lora_adapter,
)
from index import build_index

#: Standard deviation of the random LoRA B entries: enough to move embeddings, like a trained adapter.
B_STD = 0.01


def random_adapters(
    encoder: Encoder, out: Path, count: int, *, rank: int = 8, seed: int = 0, top_layers: int | None = None
) -> list[Path]:
    """``count`` PEFT adapter directories ``out/adapter-<i>`` with distinct random weights.

    ``top_layers``: LoRA on the encoder's top N layers only (``TrainConfig.top_layers``), None: on all.
    """
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from experts.layer_resume import first_layer

    template = out / "template"
    if not template.exists():
        new_lora_adapter(encoder.config, template, rank=rank, base_id=encoder.model_id, seed=seed)
    weights_name = adapter_weights_file(template).name
    tensors = load_file(str(template / weights_name))
    layers = int(encoder.config.num_hidden_layers)
    cut = 0 if top_layers is None else layers - top_layers
    tensors = {key: value for key, value in tensors.items() if first_layer([key]) >= cut}
    paths = []
    for i in range(count):
        target = out / f"adapter-{i:03d}"
        if not target.exists():
            generator = torch.Generator().manual_seed(seed * 100_003 + i)
            randomised = {}
            for key, value in tensors.items():
                std = B_STD if ".lora_B." in key else float(value.std()) or B_STD
                randomised[key] = torch.randn(value.shape, generator=generator, dtype=value.dtype) * std
            target.mkdir(parents=True)
            for extra in template.iterdir():
                if extra.name != weights_name:
                    shutil.copy2(extra, target / extra.name)
            if top_layers is not None:
                config_file = target / "adapter_config.json"
                config = json.loads(config_file.read_text())
                config["layers_to_transform"] = list(range(cut, layers))
                config_file.write_text(json.dumps(config, indent=2))
            save_file(randomised, str(target / weights_name), metadata={"format": "pt"})
        paths.append(target)
    return paths


def corpus_slice(datasets: Path, collection: str, out: Path, docs: int, *, part: int = 0) -> Path:
    """Lines ``part * docs`` to ``(part + 1) * docs`` of a collection's corpus (the first ``docs``: part 0), written
    once to ``out``."""
    target = out / (f"{collection}-first-{docs}.jsonl" if part == 0 else f"{collection}-part-{part}-of-{docs}.jsonl")
    if not target.exists():
        out.mkdir(parents=True, exist_ok=True)
        with open(datasets / collection / "corpus.jsonl", encoding="utf-8") as source:
            target.write_text("".join(itertools.islice(source, part * docs, (part + 1) * docs)), encoding="utf-8")
    return target


def random_unit_rows(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 rows of norm 1."""
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def synthetic_expert(
    root: Path,
    name: str,
    *,
    encoder: Encoder,
    adapter: Path,
    corpus: Path,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    pilots: np.ndarray | None = None,
    seed: int = 0,
) -> ExpertDir:
    """A complete expert under ``root``: ``adapter`` (marked trained), an index of ``corpus``, pilots.

    ``embed`` defaults to random unit vectors (no model pass: fast, fine for
    timing and memory); pass the encoder's base embedding for a searchable index.
    ``pilots`` defaults to 4 random unit rows.
    """
    rng = np.random.default_rng(seed)
    expert = create_expert(root, name, encoder=encoder, adapter_from=adapter, description="benchmark stand-in")
    embed = embed or (lambda texts: random_unit_rows(len(texts), encoder.dim, rng))
    report = build_index(
        [corpus],
        embed=embed,
        dim=encoder.dim,
        out_dir=expert.new_index_path(),
        work_dir=expert.work_path("index"),
        build_key=f"bench:{name}",
        progress=False,
    )
    expert.publish(index=IndexSection(directory=report.directory.name, factory="Flat", count=report.documents))
    pilots = random_unit_rows(4, encoder.dim, rng) if pilots is None else pilots
    file = expert.stage_pilots(np.asarray(pilots, dtype=np.float32))
    expert.publish(pilots=PilotsSection(file=file, count=len(pilots), method="random", source="benchmark"))
    return expert


def synthetic_root(
    root: Path,
    count: int,
    *,
    encoder: Encoder,
    datasets: Path,
    docs: int,
    collections: Sequence[str] = COLLECTIONS,
    seed: int = 0,
    top_layers: int | None = None,
) -> list[ExpertDir]:
    """``count`` experts ``expert-000``... with random adapters and random-vector indexes of ``docs`` documents.

    Corpora cycle through ``collections`` (first ``docs`` lines of each); existing experts are reused.
    ``top_layers``: the adapters on the encoder's top N layers only (None: on every layer).
    """
    adapters = random_adapters(encoder, root / ".adapters", count, seed=seed, top_layers=top_layers)
    made = []
    for i in range(count):
        name = f"expert-{i:03d}"
        if (root / name / "manifest.json").is_file():
            made.append(ExpertDir(root / name))
            continue
        corpus = corpus_slice(datasets, collections[i % len(collections)], root / ".corpora", docs)
        made.append(synthetic_expert(root, name, encoder=encoder, adapter=adapters[i], corpus=corpus, seed=seed + i))
    return made


def adapter_and_index_mib(expert: ExpertDir) -> tuple[float, float]:
    """On-disk size of an expert's adapter weights and of its published index, in MiB."""
    manifest = expert.read_manifest()
    adapter = adapter_weights_file(expert.path / ADAPTER_DIR).stat().st_size / 2**20
    index_dir = expert.path / manifest.index.directory if manifest.index else None
    index = sum(p.stat().st_size for p in index_dir.iterdir() if p.is_file()) / 2**20 if index_dir else 0.0
    return adapter, index
