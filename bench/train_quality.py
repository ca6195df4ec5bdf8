"""Does training help? Train an expert per collection, then score base vs expert on the test qrels.

Run by hand (not in CI)::

    python bench/train_quality.py cranfield cisi            # corpus-only experts
    python bench/train_quality.py scifact                   # + its labelled train split
    python bench/train_quality.py scifact --corpus-only     # ablation
    python bench/train_quality.py cacm --steps 500 --temperature 0.03 --root /tmp/rr-bench

Each collection's expert is trained with ``app.offline.expert_training.train_expert`` exactly
as ``rr train-expert`` does (documents from ``<datasets>/<name>/corpus.jsonl``,
and ``queries.jsonl`` + ``qrels/train.tsv`` where a train split exists), then
the judged test queries are embedded by the base encoder and by the expert's
adapter and searched in the expert's own index. Both runs are scored with
ir-measures (nDCG@10, R@100) in the same process, next to the training time.

With ``--root`` the experts are kept and a second run retrains them with
``replace=True``, reusing the index (no re-embedding of the corpus).
Timings depend on what else runs on the machine: read them as rough.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ir_measures
from ir_measures import R, nDCG

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.offline.evaluation import read_test_set  # noqa: E402
from app.offline.expert_training import train_expert  # noqa: E402
from app.offline.pilot_selection import JudgedQueries  # noqa: E402
from experts import Encoder, ExpertDir, TrainConfig  # noqa: E402
from index import Collection  # noqa: E402

logger = logging.getLogger("bench.train_quality")
MEASURES = [nDCG @ 10, R @ 100]


@dataclass
class Row:
    collection: str
    documents: int
    test_queries: int
    training: str
    base_ndcg10: float
    expert_ndcg10: float
    base_recall100: float
    expert_recall100: float
    index_seconds: float
    train_seconds: float
    total_seconds: float
    first_loss: float
    final_loss: float


def evaluate(
    collection: Collection, encoder: Encoder, adapter: str | None, test: JudgedQueries, *, query_max_length: int
):
    """nDCG@10 and R@100 of one encoder choice over the judged test queries, searching the expert's index."""
    vectors = encoder.embed(test.texts, expert=adapter, max_length=query_max_length)
    hits = collection.search(vectors, 100)
    run = {qid: {hit.id: hit.score for hit in row} for qid, row in zip(test.ids, hits, strict=True)}
    scores = ir_measures.calc_aggregate(MEASURES, test.qrels, run)
    return scores[nDCG @ 10], scores[R @ 100]


def bench_collection(name: str, args: argparse.Namespace, encoder: Encoder, root: Path, config: TrainConfig) -> Row:
    folder = args.datasets / name
    train_qrels = folder / "qrels" / "train.tsv"
    supervised = train_qrels.is_file() and not args.corpus_only
    result = train_expert(
        root,
        name,
        encoder=encoder,
        corpora=[folder / "corpus.jsonl"],
        queries=folder / "queries.jsonl" if supervised else None,
        qrels=train_qrels if supervised else None,
        config=config,
        replace=True,
        spans_with_title=args.spans_with_title,
        spans_without_title=args.spans_without_title,
        supervised_repeat=args.supervised_repeat,
        progress=not args.quiet,
    )
    test = read_test_set(args.datasets, name)
    expert = ExpertDir(root / name)
    manifest = expert.read_manifest()
    adapter = f"{name}@bench"
    encoder.add_adapter(adapter, expert.adapter_path)
    try:
        with Collection.open(expert.path / manifest.index.directory) as collection:
            base = evaluate(collection, encoder, None, test, query_max_length=args.query_length)
            tuned = evaluate(collection, encoder, adapter, test, query_max_length=args.query_length)
    finally:
        encoder.remove_adapter(adapter)
    kinds = ", ".join(f"{n} {k}" for k, n in result.pair_kinds.items())
    return Row(
        collection=name,
        documents=manifest.index.count,
        test_queries=len(test.ids),
        training=("supervised + corpus" if supervised else "corpus only") + f" ({kinds})",
        base_ndcg10=base[0],
        expert_ndcg10=tuned[0],
        base_recall100=base[1],
        expert_recall100=tuned[1],
        index_seconds=result.index_seconds,
        train_seconds=result.train.seconds,
        total_seconds=result.seconds,
        first_loss=result.train.first_loss,
        final_loss=result.train.final_loss,
    )


def table(rows: list[Row]) -> str:
    lines = [
        f"{'collection':<10} {'docs':>6} {'tests':>5}  {'nDCG@10 base':>12} {'expert':>7} {'delta':>7}  "
        f"{'R@100 base':>10} {'expert':>7}  {'index s':>7} {'train s':>7} {'total s':>7}  training"
    ]
    for r in rows:
        lines.append(
            f"{r.collection:<10} {r.documents:>6} {r.test_queries:>5}  {r.base_ndcg10:>12.4f} {r.expert_ndcg10:>7.4f} "
            f"{r.expert_ndcg10 - r.base_ndcg10:>+7.4f}  {r.base_recall100:>10.4f} {r.expert_recall100:>7.4f}  "
            f"{r.index_seconds:>7.0f} {r.train_seconds:>7.0f} {r.total_seconds:>7.0f}  {r.training}"
        )
    return "\n".join(lines)


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collections", nargs="+", help="collection folders under --datasets, e.g. cranfield cisi")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument(
        "--root", type=Path, default=None, help="keep the experts here (default: a temporary directory)"
    )
    parser.add_argument("--corpus-only", action="store_true", help="ignore a train split even where one exists")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--query-length", type=int, default=64, help="token limit of test queries (the service's default)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--hard-negatives", type=int, default=None)
    parser.add_argument("--full-softmax-limit", type=int, default=defaults.full_softmax_limit)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--spans-with-title", type=int, default=2)
    parser.add_argument("--spans-without-title", type=int, default=3)
    parser.add_argument("--supervised-repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        rank=args.rank,
        alpha=args.alpha,
        hard_negatives=args.hard_negatives,
        full_softmax_limit=args.full_softmax_limit,
        seed=args.seed,
    )
    encoder = Encoder(threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rr-train-quality-") as scratch:
        root = args.root or Path(scratch)
        for name in args.collections:
            started = time.perf_counter()
            rows.append(bench_collection(name, args, encoder, root, config))
            logger.info("%s done in %.0fs", name, time.perf_counter() - started)
            print(table(rows[-1:]), flush=True)
    print("\n" + table(rows))
    print(f"recipe: {json.dumps(config.as_dict())}")
    if args.json is not None:
        args.json.write_text(json.dumps({"recipe": config.as_dict(), "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
