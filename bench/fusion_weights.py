"""Does tuning an expert's fusion weight at build time pick a weight that is good on test queries?

Run by hand (not in CI), on a root that holds one trained expert per shared
collection (expert name = collection folder name)::

    RR_DATA_DIR=/tmp/trained python bench/fusion_weights.py --datasets ../shared/datasets

For each expert, nDCG@10 of the weighted dense/BM25 fusion at dense shares
0.0 .. 1.0, on: pseudo queries from its documents and, where the collection
has a train split, its labelled training queries (what `rr tune-fusion` can
tune on), and on the test queries with the expert's and the base encoder's
query vectors (what the tuned weight is judged by; never used to tune).
Prints, per expert, the weight each tuning set picks and what that weight
scores on the test queries, against the untuned 0.5.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.loading import open_encoder  # noqa: E402
from app.offline.fusion_tuning import best_weight, from_collection, fusion_curve  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import argument_parser  # noqa: E402
from experts import ExpertDir  # noqa: E402
from index import Collection  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument("--limit", type=int, default=500, help="Tuning queries sampled (test queries: all).")
    args = parser.parse_args()
    settings = Settings()
    encoder = open_encoder(settings)
    summary = []
    for name in args.collections:
        expert = ExpertDir(settings.data_dir / name)
        manifest = expert.read_manifest()
        adapter = None
        if manifest.adapter.trained:
            adapter = f"{name}@bench"
            encoder.add_adapter(adapter, expert.adapter_path)
        folder = args.datasets / name
        with Collection.open(expert.path / manifest.index.directory) as collection:
            started = time.perf_counter()
            curves = {
                "pseudo": fusion_curve(encoder, adapter, collection, from_collection(collection, limit=args.limit))
            }
            seconds = time.perf_counter() - started
            if (folder / "qrels" / "train.tsv").exists():
                labelled = from_collection(
                    collection, queries=folder / "queries.jsonl", qrels=folder / "qrels" / "train.tsv", limit=args.limit
                )
                curves["labelled"] = fusion_curve(encoder, adapter, collection, labelled)
            test = from_collection(
                collection, queries=folder / "queries.jsonl", qrels=folder / "qrels" / "test.tsv", limit=10**6
            )
            curves["test (expert)"] = fusion_curve(encoder, adapter, collection, test)
            curves["test (base)"] = fusion_curve(encoder, None, collection, test)
        if adapter is not None:
            encoder.remove_adapter(adapter)
        print(f"\n{name}: pseudo-query tuning took {seconds:.1f} s")
        print(f"  {'queries':14s} {'best':>5s}  " + " ".join(f"{w:>5.1f}" for w in curves["pseudo"]))
        for label, curve in curves.items():
            print(f"  {label:14s} {best_weight(curve):5.1f}  " + " ".join(f"{v:5.3f}" for v in curve.values()))
        test_curve = curves["test (expert)"]
        picks = {label: best_weight(curves[label]) for label in curves if not label.startswith("test")}
        summary.append(
            (name, test_curve[0.5], {label: (w, test_curve[w]) for label, w in picks.items()}, max(test_curve.values()))
        )
    print("\nnDCG@10 on test queries, expert query vectors: untuned 0.5 vs the weight each tuning set picks")
    for name, untuned, picks, ceiling in summary:
        chosen = "  ".join(f"{label} {w:.1f}: {v:.3f} ({v - untuned:+.3f})" for label, (w, v) in picks.items())
        print(f"  {name:10s} 0.5: {untuned:.3f}  {chosen}  best possible: {ceiling:.3f} ({ceiling - untuned:+.3f})")


if __name__ == "__main__":
    main()
