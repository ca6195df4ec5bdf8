"""Can a cross-encoder trained here, from the bundled MiniLM checkpoint, rerank hybrid search for the better?

Run by hand (not in CI), on a root of built experts (one per shared collection, expert name =
collection folder name; `rr demo --no-serve` builds one). 20-40 minutes on 2 cores::

    RR_DATA_DIR=data/experts python bench/reranker_training.py --steps 600 --out /tmp/reranker

Issue 17 names a reranking stage as a lever "if one can be trained here". No trained reranker can be
downloaded on this machine, so this trains one: ``AutoModelForSequenceClassification`` made from
all-MiniLM-L6-v2's weights with a new one-logit head, fine-tuned listwise (softmax cross-entropy over
one positive and ``--negatives`` hard negatives per query, the recipe of the MS MARCO MiniLM
cross-encoders) on:

- pseudo queries of every collection's documents (title, else 4-12-word spans: ``pseudo_pairs``),
  a seeded tenth of each collection's documents held out;
- with ``--labelled``, the first half of scifact's labelled *train* queries.

Hard negatives: the best BM25 and base-dense hits of the query in its own collection that are not
its positives (half from each).

Dev set, what any choice here is made on: the second half of scifact's train queries (never
trained on). Candidates: the top ``--candidates`` of weighted hybrid search (base encoder + BM25,
the expert's own index, the expert's weight). Printed: nDCG@10 of the hybrid order, of the
cross-encoder's order, and of interpolations ``(1 - l) * minmax(hybrid) + l * minmax(ce)``.
With ``--test``, the same on every collection's test queries, reported and not chosen on.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ir_measures
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.loading import open_encoder  # noqa: E402
from app.offline.fusion_tuning import TuningQueries, from_collection  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import argument_parser  # noqa: E402
from experts import ExpertDir, pseudo_pairs  # noqa: E402
from experts.base_model import resolve_model  # noqa: E402
from index import Collection, fuse_dense_lexical  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")
NDCG = ir_measures.nDCG @ 10
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Domain:
    name: str
    collection: Collection
    weight: float
    text: dict[int, str]  # docstore id -> "title text"
    ids: np.ndarray  # docstore ids, in vector order
    pairs: list[tuple[str, str]]  # (title, text), in vector order


def open_domain(root: Path, name: str) -> Domain:
    expert = ExpertDir(root / name)
    manifest = expert.read_manifest()
    assert manifest.index is not None, f"{name} has no index"
    collection = Collection.open(expert.path / manifest.index.directory)
    rows, _ = collection.vectors()
    docs = collection.docstore.get(rows.tolist())
    assert all(d is not None for d in docs)
    text = {int(r): f"{d.title} {d.text}".strip() for r, d in zip(rows.tolist(), docs, strict=True)}
    weight = manifest.retrieval.weight if manifest.retrieval else 0.5
    return Domain(name, collection, weight, text, rows, [(d.title, d.text) for d in docs])


def candidates(domain: Domain, encoder, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted hybrid (base encoder) top-k: (scores, ids)."""
    vectors = encoder.embed(queries, max_length=64)
    dense = domain.collection.dense.search(vectors, 200)
    lexical = domain.collection.search_lexical(queries, 200)
    fused = fuse_dense_lexical(dense, lexical, k=k, method="weighted", weight=domain.weight)
    return fused.scores, fused.ids


def mined_negatives(
    domain: Domain, encoder, queries: list[str], positives: list[set[int]], n: int, rng
) -> list[list[int]]:
    vectors = encoder.embed(queries, max_length=64)
    _, dense_ids = domain.collection.dense.search(vectors, 30)
    _, lexical_ids = domain.collection.search_lexical(queries, 30)
    out = []
    for q in range(len(queries)):
        pool_d = [int(i) for i in dense_ids[q] if i >= 0 and int(i) not in positives[q]]
        pool_l = [int(i) for i in lexical_ids[q] if i >= 0 and int(i) not in positives[q]]
        picked: list[int] = []
        for pool in (pool_l[: 2 * n], pool_d[: 2 * n]):
            for i in rng.sample(pool, min(len(pool), n)):
                if i not in picked and len(picked) < n:
                    picked.append(i)
        while len(picked) < n:  # short pools: random documents
            i = int(domain.ids[rng.randrange(len(domain.ids))])
            if i not in positives[q] and i not in picked:
                picked.append(i)
        out.append(picked)
    return out


def training_groups(domains, encoder, args, dev_ids) -> list[tuple[str, list[str]]]:
    """(query, [positive, negative, ...]) groups over every domain."""
    rng = random.Random(args.seed)
    groups = []
    for domain in domains.values():
        ids = domain.ids.tolist()
        held = set(np.random.default_rng(args.seed).permutation(len(ids))[: len(ids) // 10].tolist())
        pairs = [p for p in pseudo_pairs(domain.pairs, seed=args.seed) if not held & set(p.positives)]
        rng.shuffle(pairs)
        pairs = pairs[: args.per_domain]
        queries = [p.query for p in pairs]
        positives = [{ids[i] for i in p.positives} for p in pairs]
        if args.labelled and domain.name == "scifact":
            train = from_collection(
                domain.collection,
                queries=args.datasets / "scifact" / "queries.jsonl",
                qrels=args.datasets / "scifact" / "qrels" / "train.tsv",
                limit=10_000,
            )
            for text, relevant in zip(train.texts, train.relevant, strict=True):
                if text not in dev_ids:
                    for _ in range(args.labelled_repeat):
                        queries.append(text)
                        positives.append(set(relevant))
        negatives = mined_negatives(domain, encoder, queries, positives, args.negatives, rng)
        for query, pos, neg in zip(queries, positives, negatives, strict=True):
            groups.append((query, [domain.text[rng.choice(sorted(pos))], *(domain.text[i] for i in neg)]))
        print(f"{domain.name}: {len(queries)} training queries", flush=True)
    rng.shuffle(groups)
    return groups


def train(groups, args, source: str, out: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * args.steps), args.steps)
    started = time.perf_counter()
    size = 1 + args.negatives
    losses = []
    for step in range(args.steps):
        batch = [groups[(step * args.batch + j) % len(groups)] for j in range(args.batch)]
        queries = [q for q, docs in batch for _ in docs]
        docs = [d for _, docs in batch for d in docs]
        encoded = tokenizer(
            queries, docs, truncation="only_second", max_length=args.max_length, padding=True, return_tensors="pt"
        )
        logits = model(**encoded).logits.view(args.batch, size)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(args.batch, dtype=torch.long))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            print(
                f"step {step + 1}/{args.steps} loss {np.mean(losses[-25:]):.3f} {time.perf_counter() - started:.0f}s",
                flush=True,
            )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return time.perf_counter() - started


def minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def rerank_scores(reranker, domain: Domain, queries: list[str], ids: np.ndarray) -> list[np.ndarray]:
    out = []
    for q, query in enumerate(queries):
        row = [int(i) for i in ids[q] if i >= 0]
        out.append(reranker.score(query, [domain.text[i] for i in row]) if row else np.zeros(0))
    return out


def curve(queries: TuningQueries, scores, ids, ce) -> dict[float, float]:
    qrels = {str(q): {str(r): 1 for r in rel} for q, rel in enumerate(queries.relevant)}
    result = {}
    for lam in LAMBDAS:
        run = {}
        for q in range(len(queries.texts)):
            keep = ids[q] >= 0
            if not keep.any():
                continue
            s = (1 - lam) * minmax(scores[q][keep]) + lam * minmax(np.asarray(ce[q], dtype=np.float64))
            run[str(q)] = {str(int(i)): float(v) for i, v in zip(ids[q][keep], s, strict=True)}
        result[lam] = float(ir_measures.calc_aggregate([NDCG], qrels, run)[NDCG])
    return result


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=4, help="queries per step")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--per-domain", type=int, default=2000, help="pseudo queries per collection")
    parser.add_argument("--labelled", action="store_true", help="also train on half of scifact's train queries")
    parser.add_argument("--labelled-repeat", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/reranker"))
    parser.add_argument("--skip-training", action="store_true", help="evaluate the model already in --out")
    parser.add_argument("--test", action="store_true", help="also report every collection's test queries")
    args = parser.parse_args()

    import torch

    from experts import CrossEncoder

    torch.set_num_threads(args.threads)
    settings = Settings()
    encoder = open_encoder(settings)
    domains = {name: open_domain(settings.data_dir, name) for name in COLLECTIONS}
    scifact = domains["scifact"]
    train_split = from_collection(
        scifact.collection,
        queries=args.datasets / "scifact" / "queries.jsonl",
        qrels=args.datasets / "scifact" / "qrels" / "train.tsv",
        limit=10_000,
    )
    half = len(train_split.texts) // 2
    dev = TuningQueries(train_split.texts[half:], train_split.relevant[half:], "labelled")
    dev_texts = set(dev.texts)
    report: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_training:
        groups = training_groups(domains, encoder, args, dev_texts)
        _, source = resolve_model(settings.base_model)
        report["train_seconds"] = train(groups, args, source, args.out)
        report["training_groups"] = len(groups)
    reranker = CrossEncoder(args.out, max_length=256, batch_size=8, batch_tokens=4096)

    started = time.perf_counter()
    scores, ids = candidates(scifact, encoder, dev.texts, args.candidates)
    ce = rerank_scores(reranker, scifact, dev.texts, ids)
    report["dev"] = curve(dev, scores, ids, ce)
    print(
        f"dev (scifact train, second half, {len(dev.texts)} q): {report['dev']} ({time.perf_counter() - started:.0f}s)",
        flush=True,
    )
    if args.test:
        tests = {}
        for name, domain in domains.items():
            test = from_collection(
                domain.collection,
                queries=args.datasets / name / "queries.jsonl",
                qrels=args.datasets / name / "qrels" / "test.tsv",
                limit=10_000,
            )
            scores, ids = candidates(domain, encoder, test.texts, args.candidates)
            ce = rerank_scores(reranker, domain, test.texts, ids)
            tests[name] = curve(test, scores, ids, ce)
            print(f"test {name} ({len(test.texts)} q): {tests[name]}", flush=True)
        report["test"] = tests
        report["test_macro"] = {lam: float(np.mean([t[lam] for t in tests.values()])) for lam in LAMBDAS}
        print(f"test macro: {report['test_macro']}", flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
