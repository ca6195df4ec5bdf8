"""Does training the adapter on the fused (hybrid) score make hybrid search better than training on dense alone?

Run by hand (not in CI), on a root of built experts (one per shared collection, expert name =
collection folder name; `rr demo --no-serve` builds one)::

    RR_DATA_DIR=data/experts python bench/fusion_training.py --collections scifact cacm

For each collection, adapters are trained with the same recipe (``TrainConfig`` defaults) and
one knob changed, ``fusion_weight``: None (today: InfoNCE on the dense score) against the
weights given. Nothing here is measured on test queries. The dev sets:

- ``pseudo``: a seeded tenth of the collection's documents is held out of training (no pseudo
  pair of theirs is trained on; they stay in the index), and one pseudo query (its title, else a
  span) of each held-out document is a dev query with that document as the one relevant.
- ``train``: where the collection has a labelled train split (scifact), its queries and qrels.
  The adapters here are trained on pseudo queries only, so these real queries are unseen.

Printed per collection and dev set: nDCG@10 of hybrid search (the expert's own index, weighted
fusion at the expert's weight) and of dense search, with the base encoder and with each adapter.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.loading import open_encoder  # noqa: E402
from app.offline.expert_training import bm25_search  # noqa: E402
from app.offline.fusion_tuning import TuningQueries, from_collection, fusion_curve, vector_fusion_curve  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import argument_parser  # noqa: E402
from experts import ExpertDir, TrainConfig, pseudo_pairs, train_adapter  # noqa: E402
from experts.pseudo_queries import pseudo_queries  # noqa: E402
from index import Collection  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")


def _weight_label(weight: float | None) -> str:
    return "dense-trained" if weight is None else f"fused-{weight:g}"


def bench_collection(name: str, args, encoder, root: Path, scratch: Path) -> list[str]:
    expert = ExpertDir(root / name)
    manifest = expert.read_manifest()
    assert manifest.index is not None, f"{name} has no index"
    fusion = manifest.retrieval.weight if manifest.retrieval else 0.5
    lines = []
    with Collection.open(expert.path / manifest.index.directory) as collection:
        rows, vectors = collection.vectors()
        docs = collection.docstore.get(rows.tolist())
        texts = [(doc.title, doc.text) for doc in docs if doc is not None]
        assert len(texts) == len(rows)
        rng = np.random.default_rng(args.seed)
        held = np.sort(rng.permutation(len(rows))[: max(1, round(args.holdout * len(rows)))])
        held_set = set(held.tolist())
        pairs = [p for p in pseudo_pairs(texts, seed=args.seed) if not held_set & set(p.positives)]
        dev_texts = pseudo_queries([texts[i] for i in held[: args.dev_queries]], seed=args.seed + 1)
        dev_sets = {"pseudo": TuningQueries(dev_texts, [(int(rows[i]),) for i in held[: args.dev_queries]], "pseudo")}
        split = args.datasets / name / "qrels" / "train.tsv"
        if split.is_file():
            dev_sets["train"] = from_collection(
                collection, queries=args.datasets / name / "queries.jsonl", qrels=split, limit=10_000
            )

        adapters: dict[str, str | None] = {"base": None}
        for weight in args.weights:
            label = _weight_label(weight)
            config = TrainConfig(steps=args.steps, fusion_weight=weight, seed=args.seed, top_layers=args.top_layers)
            out = scratch / f"{name}-{label}"
            started = time.perf_counter()
            train_adapter(
                encoder,
                pairs,
                vectors,
                out,
                config=config,
                lexical_search=bm25_search(collection, rows),
                progress=not args.quiet,
            )
            print(f"{name}: trained {label} on {len(pairs)} pairs in {time.perf_counter() - started:.0f}s", flush=True)
            adapter = f"{name}-{label}"
            encoder.add_adapter(adapter, out)
            adapters[label] = adapter
        for set_name, queries in dev_sets.items():
            for label, adapter in adapters.items():
                curve = fusion_curve(encoder, adapter, collection, queries, weights=(fusion, 1.0))
                lines.append(
                    f"| {name} | {set_name} ({len(queries.texts)}) | {label} | {curve[fusion]:.3f} | {curve[1.0]:.3f} |"
                )
                print(lines[-1], flush=True)
                if adapter is None:
                    continue
                base = encoder.embed(queries.texts, max_length=64)
                tuned = encoder.embed(queries.texts, expert=adapter, max_length=64)
                for mix in args.mix:
                    mixed = mix * tuned + (1 - mix) * base
                    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
                    score = vector_fusion_curve(mixed.astype(np.float32), collection, queries, weights=(fusion,))[
                        fusion
                    ]
                    lines.append(
                        f"| {name} | {set_name} ({len(queries.texts)}) | {label} mixed {mix:g} | {score:.3f} | |"
                    )
                    print(lines[-1], flush=True)
        for adapter in adapters.values():
            if adapter is not None:
                encoder.remove_adapter(adapter)
    return lines


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument(
        "--weights",
        nargs="+",
        default=[None, 0.5],
        type=lambda v: None if v == "none" else float(v),
        help="fusion_weight values to train with ('none': dense score only)",
    )
    parser.add_argument(
        "--mix", nargs="*", type=float, default=[0.5], help="also: query vector = mix * expert + rest * base"
    )
    parser.add_argument("--top-layers", type=int, default=None, help="LoRA on the top N layers only (default: all)")
    parser.add_argument("--steps", type=int, default=TrainConfig().steps)
    parser.add_argument("--holdout", type=float, default=0.1, help="share of documents held out of training")
    parser.add_argument("--dev-queries", type=int, default=300, help="pseudo dev queries at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    encoder = open_encoder(settings)
    lines = ["| collection | dev set | query encoder | hybrid nDCG@10 | dense nDCG@10 |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="rr-fusion-training-") as scratch:
        for name in args.collections:
            lines += bench_collection(name, args, encoder, settings.data_dir, Path(scratch))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
