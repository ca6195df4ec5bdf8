"""Which form of hybrid fusion ranks best inside one collection: normalisations, exact scores, the base vector as a third list?

Run by hand (not in CI), on a root of built experts (one per shared collection, expert name =
collection folder name; the adapters are trained here, so untrained ones do)::

    RR_DATA_DIR=data/untrained python bench/fusion_forms.py --datasets ../shared/datasets --adapters data/fusion-forms

The service fuses an expert's dense list (the query embedded with the expert's adapter) and its BM25 list
by min-max normalising each list over its own 200 candidates, a document missing from a list getting 0
there (``index.fusion.fuse_dense_lexical``, dense share 0.5). Issue 17 names fusion as a lever; the
forms compared here, all from the same exact scores:

- ``minmax``: the service's rule, at dense shares 0.3 .. 0.7.
- ``exact``: a document missing from one list gets its exact score there (every score is computed),
  and both sides are normalised over the union of the candidates.
- ``tmm``: theoretical-minimum min-max (after Bruch et al., 2023): scores divided by the list's best,
  the floor taken as 0 for BM25 and for cosines (negative ones are clipped), so the list's weakest
  candidate does not set the scale.
- ``z``: z-scores over each list's candidates, a missing document getting its list's lowest.
- ``three``: the query's *base* vector as a third list (the router computes it anyway, and every
  collection holds base vectors): ``(1 - w) * bm25 + w * (a * expert + (1 - a) * base)``, each min-max.
- ``vmix``: one dense list from the normalised mean ``a * expert + (1 - a) * base`` of the two query vectors.
- ``bm25-K1-B`` and ``minmax-0.5-K1-B``: BM25 alone and the service's fusion with BM25 indexes built at other
  ``k1`` / ``b`` (``--bm25``; the service's are 1.5 / 0.75).

Adapters are trained with ``rr train-expert``'s defaults (``TrainConfig()``) on pseudo queries of nine
tenths of each collection's documents, and kept in ``--adapters`` (trained again only when missing). The
dev sets, never trained on: ``pseudo``, one pseudo query of each held-out document (known item);
``train``, scifact's labelled training queries (real; the scifact adapter here never saw them). No
test query is read.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ir_measures  # noqa: E402
from ir_measures import nDCG  # noqa: E402

from app.engine.loading import open_encoder  # noqa: E402
from app.offline.fusion_tuning import TuningQueries, from_collection  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import COLLECTIONS, argument_parser, write_json  # noqa: E402
from experts import ExpertDir, TrainConfig, pseudo_pairs, train_adapter  # noqa: E402
from experts.pseudo_queries import pseudo_queries  # noqa: E402
from index import Collection, LexicalSettings, fuse_dense_lexical  # noqa: E402
from index.store.lexical import LexicalIndex  # noqa: E402

CANDIDATES = 200
_NDCG = nDCG @ 10
#: A form: (expert scores, base scores, bm25 scores), each (nq, n) exact over every document -> (nq, n) fused.
Form = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """(nq, n) -> (nq, n) mask of each row's ``k`` best finite scores (BM25 rows hold -inf where no stem is shared)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, part, True, axis=1)
    return mask & np.isfinite(scores)


def _minmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Min-max over each row's masked entries; unmasked entries 0."""
    held = np.where(mask, scores, np.nan)
    low, high = np.nanmin(held, axis=1, keepdims=True), np.nanmax(held, axis=1, keepdims=True)
    span = np.where(high - low > 1e-12, high - low, 1.0)
    return np.where(mask, (scores - low) / span, 0.0)


def _zscore(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    held = np.where(mask, scores, np.nan)
    mean, std = np.nanmean(held, axis=1, keepdims=True), np.nanstd(held, axis=1, keepdims=True)
    z = (scores - mean) / np.where(std > 1e-12, std, 1.0)
    floor = np.nanmin(np.where(mask, z, np.nan), axis=1, keepdims=True)
    return np.where(mask, z, floor)


def _tmm(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Divided by the row's best masked score, floored at 0 (the theoretical minimum of both sides here)."""
    high = np.nanmax(np.where(mask, scores, np.nan), axis=1, keepdims=True)
    return np.where(mask, np.clip(scores, 0, None) / np.where(high > 1e-12, high, 1.0), 0.0)


def forms(weights: list[float], mixes: list[float], k: int) -> dict[str, Form]:
    out: dict[str, Form] = {}
    for w in weights:
        out[f"minmax-{w:g}"] = lambda e, b, lx, w=w: _service(e, lx, w, k)
    for w in weights:
        out[f"exact-{w:g}"] = lambda e, b, lx, w=w: _exact(e, lx, w, k)
        out[f"tmm-{w:g}"] = lambda e, b, lx, w=w: w * _tmm(e, _top(e, k)) + (1 - w) * _tmm(lx, _top(lx, k))
        out[f"z-{w:g}"] = lambda e, b, lx, w=w: w * _zscore(e, _top(e, k)) + (1 - w) * _zscore(lx, _top(lx, k))
    for a in mixes:
        out[f"three-0.5-{a:g}"] = lambda e, b, lx, a=a: (
            0.5 * (a * _minmax(e, _top(e, k)) + (1 - a) * _minmax(b, _top(b, k))) + 0.5 * _minmax(lx, _top(lx, k))
        )
    return out


def _service(expert: np.ndarray, lexical: np.ndarray, weight: float, k: int) -> np.ndarray:
    """The service's fusion itself (``fuse_dense_lexical``) on the top candidates, scattered back to (nq, n)."""
    sides = []
    for scores in (expert, lexical):
        ids = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]
        top = np.take_along_axis(scores, ids, axis=1)
        sides.append((top.astype(np.float32), np.where(np.isfinite(top), ids, -1)))
    fused = fuse_dense_lexical(sides[0], sides[1], k=2 * k, weight=weight)
    return _scatter(fused.scores, fused.ids, expert.shape[1])


def _exact(expert: np.ndarray, lexical: np.ndarray, weight: float, k: int) -> np.ndarray:
    union = _top(expert, k) | _top(lexical, k)
    lex = np.where(np.isfinite(lexical), lexical, 0.0)
    fused = weight * _minmax(expert, union) + (1 - weight) * _minmax(lex, union)
    return np.where(union, fused, -np.inf)


def ndcg(fused: np.ndarray, relevant: list[tuple[int, ...]]) -> float:
    """nDCG@10 of each row's 10 best positions, relevance by position."""
    top = np.argsort(-fused, axis=1, kind="stable")[:, :10]
    run = {
        str(q): {str(int(p)): float(fused[q, p]) for p in row if np.isfinite(fused[q, p])} for q, row in enumerate(top)
    }
    qrels = {str(q): {str(p): 1 for p in rel} for q, rel in enumerate(relevant)}
    return float(ir_measures.calc_aggregate([_NDCG], qrels, run)[_NDCG])


def _scatter(scores: np.ndarray, ids: np.ndarray, n: int, position=None) -> np.ndarray:
    """(nq, k) scores at ids (-1 pads) -> (nq, n), -inf elsewhere; ``position`` maps ids to columns (None: ids are)."""
    out = np.full((len(scores), n), -np.inf)
    for q, (s, i) in enumerate(zip(scores, ids, strict=True)):
        keep = i >= 0
        out[q, i[keep] if position is None else position(i[keep])] = s[keep]
    return out


def dense_exact(collection: Collection, vectors: np.ndarray, n: int, position) -> np.ndarray:
    """(nq, n) cosine of each query vector with every document (its best chunk), by document position."""
    return _scatter(*collection.dense.search(vectors, n), n, position)


def bm25_exact(lexical: LexicalIndex, texts: list[str], n: int, position) -> np.ndarray:
    """(nq, n) BM25 score of each query text for every document sharing a stem with it (the rest -inf)."""
    return _scatter(*lexical.search(texts, n), n, position)


def adapter_for(name: str, args, encoder, held: set[int], texts, vectors) -> Path:
    out = args.adapters / name
    if (out / "adapter_config.json").is_file():
        return out
    pairs = [p for p in pseudo_pairs(texts, seed=args.seed) if not held & set(p.positives)]
    started = time.perf_counter()
    train_adapter(encoder, pairs, vectors, out, config=TrainConfig(seed=args.seed), progress=not args.quiet)
    print(f"{name}: trained on {len(pairs)} pseudo pairs in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def bench_collection(name: str, args, encoder, root: Path) -> dict[str, dict[str, float]]:
    expert = ExpertDir(root / name)
    manifest = expert.read_manifest()
    assert manifest.index is not None, f"{name} has no index"
    results: dict[str, dict[str, float]] = {}
    with Collection.open(expert.path / manifest.index.directory) as collection:
        rows, vectors = collection.vectors()
        docs = collection.docstore.get(rows.tolist())
        texts = [(doc.title, doc.text) for doc in docs if doc is not None]
        rng = np.random.default_rng(args.seed)
        held = np.sort(rng.permutation(len(rows))[: max(1, round(args.holdout * len(rows)))])
        adapter_dir = adapter_for(name, args, encoder, set(held.tolist()), texts, vectors)
        if args.train_only:
            return results
        encoder.add_adapter(name, adapter_dir)
        dev_held = held[: args.dev_queries]
        dev_sets = {
            "pseudo": TuningQueries(
                pseudo_queries([texts[i] for i in dev_held], seed=args.seed + 1),
                [(int(rows[i]),) for i in dev_held],
                "pseudo",
            )
        }
        split = args.datasets / name / "qrels" / "train.tsv"
        if split.is_file():
            dev_sets["train"] = from_collection(
                collection, queries=args.datasets / name / "queries.jsonl", qrels=split, limit=10_000
            )
        n = len(rows)
        passages = [f"{title} {text}" for title, text in texts]
        lexicals = {(k1, b): LexicalIndex.build([(rows, passages)], LexicalSettings(k1=k1, b=b)) for k1, b in args.bm25}

        def position(ids: np.ndarray) -> np.ndarray:
            return np.searchsorted(rows, ids)

        for set_name, queries in dev_sets.items():
            relevant = [tuple(int(p) for p in position(np.asarray(rel))) for rel in queries.relevant]
            base_q = encoder.embed(queries.texts, max_length=64)
            expert_q = encoder.embed(queries.texts, expert=name, max_length=64)
            base = dense_exact(collection, base_q, n, position)
            tuned = dense_exact(collection, expert_q, n, position)
            lexical = bm25_exact(collection.lexical, queries.texts, n, position)
            scores = {"bm25": ndcg(lexical, relevant), "base": ndcg(base, relevant), "expert": ndcg(tuned, relevant)}
            scores["base-minmax-0.5"] = ndcg(_service(base, lexical, 0.5, args.candidates), relevant)
            for label, form in forms(args.weights, args.mixes, args.candidates).items():
                scores[label] = ndcg(form(tuned, base, lexical), relevant)
            for a in args.mixes:
                mixed = a * expert_q + (1 - a) * base_q
                mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
                dense = dense_exact(collection, mixed.astype(np.float32), n, position)
                scores[f"vmix-0.5-{a:g}"] = ndcg(_service(dense, lexical, 0.5, args.candidates), relevant)
            for (k1, b), index in lexicals.items():
                other = bm25_exact(index, queries.texts, n, position)
                scores[f"bm25-{k1:g}-{b:g}"] = ndcg(other, relevant)
                scores[f"minmax-0.5-{k1:g}-{b:g}"] = ndcg(_service(tuned, other, 0.5, args.candidates), relevant)
            key = f"{name}/{set_name} ({len(queries.texts)})"
            results[key] = scores
            print(key, json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)
        encoder.remove_adapter(name)
    return results


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument("--adapters", type=Path, required=True, help="where the held-out adapters are kept")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--mixes", nargs="*", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument(
        "--bm25",
        nargs="*",
        default=[(1.2, 0.75), (0.9, 0.4), (1.5, 0.3), (2.0, 0.75), (1.5, 0.9)],
        type=lambda v: tuple(float(x) for x in v.split(":")),
        help="BM25 k1:b pairs to build and compare",
    )
    parser.add_argument(
        "--candidates", type=int, default=CANDIDATES, help="candidates each list contributes (the service: 200)"
    )
    parser.add_argument("--holdout", type=float, default=0.1, help="share of documents held out of training")
    parser.add_argument("--dev-queries", type=int, default=300, help="pseudo dev queries at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true", help="train the missing adapters, measure nothing")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    encoder = open_encoder(settings)
    results: dict[str, dict[str, float]] = {}
    for name in args.collections:
        results.update(bench_collection(name, args, encoder, settings.data_dir))
    if not results:
        return
    labels = list(next(iter(results.values())))
    pseudo = [key for key in results if "/pseudo" in key]
    print("| form | " + " | ".join(results) + " | pseudo macro |")
    print("|---|" + "---|" * (len(results) + 1))
    for label in labels:
        macro = np.mean([results[key][label] for key in pseudo]) if pseudo else float("nan")
        print(f"| {label} | " + " | ".join(f"{results[key][label]:.3f}" for key in results) + f" | {macro:.3f} |")
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "ndcg@10": results})


if __name__ == "__main__":
    main()
