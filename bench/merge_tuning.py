"""How should a query's hits be merged when it goes to more than one expert?

Run by hand (not in CI), on a root that holds one expert per shared collection
(expert name = collection folder name), e.g. the demo's::

    RR_DATA_DIR=data/experts python bench/merge_tuning.py --datasets ../shared/datasets --split dev
    RR_DATA_DIR=data/experts python bench/merge_tuning.py --datasets ../shared/datasets --split test

Every query is routed by the deployed router (pilots plus corpus votes, the
decision ``/search`` makes) and searched in *every* expert's collection with
that expert's own adapter and its own hybrid fusion (the lists a fan-out
would get); the merge rules below are then applied to those lists, so each
rule costs no model pass. Rules:

- ``top1``: the top expert's list (today's default);
- ``rrf-N``: reciprocal rank fusion of the top N experts' lists (today's fan-out);
- ``prior-M-B-N``: every expert among the top ``N`` whose router score is
  within ``M`` of the top one is searched; a hit's merged score is its list's fused score (hybrid:
  min-max dense and BM25 over that list's candidates, so in [0, 1]) minus
  ``B`` times its expert's router-score gap to the top expert. A confident
  router (no expert within ``M``) is top-1; an unsure one interleaves;
- ``joint-M-B-N``: the same experts, but each hit's dense cosine and BM25
  score are min-max normalised over the hits of every chosen list together
  (as one index over those collections would), mixed 0.5/0.5, minus ``B`` x gap;
- ``ojoint-M-B-N``: ``joint``'s scores, but each list keeps its own fused
  order (its joint scores sorted and dealt out down the list), so the merge
  only decides how the lists interleave, never reorders one;
- ``bjoint-M-B-N``, ``objoint-M-B-N``: ``joint`` and ``ojoint`` with each
  hit's cosine to the *base* query vector in place of its expert's: every
  collection holds base-encoder vectors, so these cosines compare across
  collections (an expert's adapter moves its query vector, and with it the
  level of every cosine in its list).

``--pairs`` forces the hedge: each query's own collection and one other are
merged as equals (router-score gap ~0), for every other collection in turn,
and the table averages over the others. The merge of a query's right and
wrong lists is what a hedge does both when it routed right and when it
routed wrong, so on real queries (``--split dev-real``) this measures how
well a rule keeps the right collection's documents in front.

``--split dev`` tunes: pseudo queries (the title, else a 4-12-word span) of
documents *not* among those the demo's pilots were drawn from, the source
document being the one relevant; never a test query. Such known-item queries
favour merging (their one document scores high wherever it is), so
``--split dev-real`` adds real queries: scifact's labelled *train* queries
(the demo's scifact pilots, each with its own vote taken off). ``--split test`` reports
the test qrels for the rules named with ``--rules`` (the ones dev chose).
nDCG@10 and R@100 from ir-measures; macro (per collection) and micro (per query) averages.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.engine.retrieval import Retrieval, expert_retrieval, search_collection  # noqa: E402
from app.offline.evaluation import read_test_set, score_run  # noqa: E402
from app.offline.pilot_selection import JudgedQueries  # noqa: E402
from app.settings import Settings  # noqa: E402
from experts.pseudo_queries import pseudo_queries  # noqa: E402
from router import RoutePolicy, expert_list_votes  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")
#: How deep each collection is searched with the base query vector for the ``b`` rules' cosines.
BASE_DEPTH = 1000
#: The demo's pilots are pseudo queries of this many documents sampled with seed 0 (app.offline.building).
PILOT_SAMPLE, PILOT_SEED = 1000, 0


def dev_queries(engine: SearchEngine, name: str, *, sample: int, seed: int) -> JudgedQueries:
    """Pseudo queries of ``sample`` documents outside the pilots' sample; each one's source document is relevant."""
    return dev_sample(engine, name, sample=sample, seed=seed)[0]


def dev_sample(engine: SearchEngine, name: str, *, sample: int, seed: int) -> tuple[JudgedQueries, list[int]]:
    """:func:`dev_queries`, and each query's source document's row id in the collection."""
    collection = engine.experts[name].collection
    rows = collection.docstore.all_row_ids().tolist()
    pilots = set(random.Random(PILOT_SEED).sample(rows, min(PILOT_SAMPLE, len(rows))))
    rest = [r for r in rows if r not in pilots] or rows
    chosen = sorted(random.Random(seed).sample(rest, min(sample, len(rest))))
    ids, texts, qrels, sources = [], [], {}, []
    for number, (row, doc) in enumerate(zip(chosen, collection.docstore.get(chosen), strict=True)):
        made = pseudo_queries([(doc.title, doc.text)], seed=seed + number) if doc is not None else []
        if made:
            ids.append(f"dev-{number}")
            texts.append(made[0])
            qrels[ids[-1]] = {doc.id: 1}
            sources.append(row)
    return JudgedQueries(name, ids, texts, qrels, "pseudo queries (dev)"), sources


class SharedIdfView:
    """An expert's live view whose BM25 search scores with the routed collections' shared IDF (``--lexical-idf``)."""

    def __init__(self, view, shared) -> None:
        self._view, self._shared = view, shared

    def search_lexical(self, texts, k, *, allowed=None):
        return self._view.search_lexical(texts, k, allowed=allowed, shared_idf=self._shared)

    def __getattr__(self, name):
        return getattr(self._view, name)


LEXICAL_IDF = "own"


def split_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which queries a tuning script reads (``--split``, see the module docstring)."""
    parser.add_argument("--datasets", type=Path, required=True)
    parser.add_argument("--split", choices=("dev", "dev-real", "test"), default="dev")
    parser.add_argument("--dev-sample", type=int, default=200)
    parser.add_argument(
        "--ad-hoc",
        action="store_true",
        help="dev: route each pseudo query with its source document out of the corpus votes (ad_hoc_scores)",
    )
    parser.add_argument("--seed", type=int, default=1)


def split_collections(args: argparse.Namespace) -> tuple[str, ...]:
    """The collections ``--split`` reads: scifact alone for ``dev-real`` (the one with train queries)."""
    return ("scifact",) if args.split == "dev-real" else COLLECTIONS


def split_queries(engine: SearchEngine, name: str, args: argparse.Namespace) -> JudgedQueries:
    """Collection ``name``'s queries of ``--split``: dev pseudo queries, scifact's train queries, or the test ones."""
    if args.split == "dev":
        return dev_queries(engine, name, sample=args.dev_sample, seed=args.seed)
    return read_test_set(args.datasets, name, split="train" if args.split == "dev-real" else "test")


def ad_hoc_scores(engine: SearchEngine, texts: Sequence[str], home: str, sources: Sequence[int]) -> np.ndarray:
    """Router scores (n, E) as the engine makes them, but with each query's source document out of the votes.

    A pseudo query's own document is where its words come from, so it votes
    for its collection far more surely than any document votes for a real
    query; taken out, the query is routed by the other documents, as an ad-hoc
    query is. Its lists still hold it (it is the one document judged relevant).
    """
    names = sorted(engine.experts)
    assert tuple(names) == engine.router.experts
    base = engine.encoder.embed(list(texts), max_length=engine.query_max_length)
    scores = engine.router.scores(base).astype(np.float64)
    depth, rule = engine.vote_depth, engine.vote_rule
    source = np.asarray(sources)[:, None]

    def without(found: tuple[np.ndarray, np.ndarray], name: str) -> np.ndarray:
        values, ids = found
        if name == home:
            values = np.where(ids == source, -np.inf, values)
        return -np.sort(-values, axis=1)[:, :depth]

    with engine._holder.lease() as snapshot:
        views = [engine.experts[name].view() for name in names]
        dense = [without(view.search_dense(base, depth + 1), name) for view, name in zip(views, names)]
        lexical = [
            without(view.search_lexical(list(texts), depth + 1, shared_idf=snapshot.shared_idf), name)
            for view, name in zip(views, names)
        ]
    scores += expert_list_votes(dense, depth=depth, rule=rule, kind="dense")
    scores += expert_list_votes(lexical, depth=depth, rule=rule, kind="lexical")
    return scores.astype(np.float32)


def lists_and_scores(
    engine: SearchEngine,
    texts: Sequence[str],
    k: int,
    *,
    own_pilot: str | None = None,
    home: str | None = None,
    sources: Sequence[int] | None = None,
    base_cosines: bool = True,
):
    """Router scores (n, E) in ``names`` order, and per expert its hybrid hits for every query.

    ``own_pilot``: the queries are that expert's pilots themselves (scifact's
    train queries); each one's vote for itself is taken off its score, so it
    is routed roughly as a new query like it would be. ``sources``: each
    query's source document in collection ``home``, left out of the votes
    (:func:`ad_hoc_scores`). ``base_cosines``: also each hit's cosine with the base query vector (what the
    ``b`` rules merge by; one more pass and a deep dense search per collection), else None in its place.
    """
    names = sorted(engine.experts)
    if home is not None and sources is not None:
        scores = ad_hoc_scores(engine, texts, home, sources)
    else:
        scores = np.zeros((len(texts), len(names)), dtype=np.float32)
        for start in range(0, len(texts), 64):
            batch = engine.search(list(texts[start : start + 64]), k=1, policy=RoutePolicy())
            for i, result in enumerate(batch.results):
                for name, score in result.decision.scores:
                    scores[start + i, names.index(name)] = score
    if own_pilot is not None:
        scores[:, names.index(own_pilot)] -= 1.0 / engine.router.neighbours
    lists = {}
    base = engine.encoder.embed(list(texts), max_length=engine.query_max_length) if base_cosines else None
    for name in names:
        expert = engine.experts[name]
        retrieval = replace(expert_retrieval(engine.retrieval, expert.manifest.retrieval), mode="hybrid")
        vectors = engine.encoder.embed(list(texts), expert=expert.adapter, max_length=engine.query_max_length)
        view = expert.view()
        if LEXICAL_IDF == "shared":
            with engine._holder.lease() as snapshot:
                view = SharedIdfView(view, snapshot.shared_idf)
        found = search_collection(view, list(texts), vectors, [(k, retrieval)] * len(texts))
        # Each hit's cosine with the *base* query vector: the collections hold base-encoder vectors, so
        # these compare across collections as one index's would (the ``b`` rules).
        base_of: list[dict[str, float | None]] = [{} for _ in texts]
        floor: list[float | None] = [None] * len(texts)
        if base is not None:
            by_base = search_collection(view, list(texts), base, [(BASE_DEPTH, Retrieval(mode="dense"))] * len(texts))
            base_of = [{h.id: h.dense_score for h in row} for row in by_base]
            floor = [min((s for s in row.values() if s is not None), default=0.0) for row in base_of]
        lists[name] = [
            [
                (f"{name}/{h.id}", float(h.score), h.dense_score, h.lexical_score, base_of[i].get(h.id, floor[i]))
                for h in row
            ]
            for i, row in enumerate(found)
        ]
    return names, scores, lists


def merge(rule: str, names, scores: np.ndarray, lists, i: int, k: int) -> dict[str, float]:
    order = np.argsort(-scores[i], kind="stable")
    top = order[0]
    if rule == "top1":
        return {key: s for key, s, *_ in lists[names[top]][i][:k]}
    if rule.startswith("rrf-"):
        fused: dict[str, float] = {}
        for e in order[: int(rule.split("-")[1])]:
            for rank, (key, *_) in enumerate(lists[names[e]][i], start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (60 + rank)
        return dict(sorted(fused.items(), key=lambda item: -item[1])[:k])
    kind, margin, beta, *cap = rule.split("-")
    chosen = []
    for e in order[: int(cap[0]) if cap else len(order)]:
        gap = float(scores[i, top] - scores[i, e])
        if gap >= float(margin) and e != top:
            break
        chosen.append((e, gap))
    merged: dict[str, float] = {}
    if kind == "prior":
        for e, gap in chosen:
            for key, s, *_ in lists[names[e]][i]:
                merged[key] = s - float(beta) * gap
    else:  # joint, ojoint: dense and BM25 min-max normalised over every chosen list's hits together, then 0.5/0.5
        # ``b`` rules (bjoint, objoint): the dense side is the base query vector's cosine, not the expert's
        hits = [
            (key, base_d if kind.startswith(("b", "ob")) else d, lex, gap)
            for e, gap in chosen
            for key, _, d, lex, base_d in lists[names[e]][i]
        ]
        dense = [d for _, d, _, _ in hits if d is not None]
        lexical = [lex for _, _, lex, _ in hits if lex is not None]
        d_low, d_high = (min(dense), max(dense)) if dense else (0.0, 1.0)
        l_low, l_high = (min(lexical), max(lexical)) if lexical else (0.0, 1.0)
        for key, d, lex, gap in hits:
            dn = 0.0 if d is None else (d - d_low) / max(d_high - d_low, 1e-12)
            ln = 0.0 if lex is None else (lex - l_low) / max(l_high - l_low, 1e-12)
            merged[key] = 0.5 * dn + 0.5 * ln - float(beta) * gap
        # ojoint, objoint: each list keeps its own order: its joint scores, sorted, are dealt out down it
        if kind in ("ojoint", "objoint"):
            for e, _ in chosen:
                keys = [key for key, *_ in lists[names[e]][i]]
                for key, value in zip(keys, sorted((merged[key] for key in keys), reverse=True)):
                    merged[key] = value
    return dict(sorted(merged.items(), key=lambda item: -item[1])[:k])


def print_table(title: str, label: str, rows, table, collections, counts) -> None:
    """``table[row][collection]`` (nDCG@10, R@100) as one line per row: each collection, macro and micro nDCG@10, R@100."""
    total = sum(counts.values())
    print(f"\n{title}")
    print(f"{label:<18}" + "".join(f"{c:>10}" for c in collections) + f"{'macro':>9}{'micro':>9}{'R@100':>8}")
    for row in rows:
        ndcg = [table[row][c]["nDCG@10"] for c in collections]
        micro = sum(table[row][c]["nDCG@10"] * counts[c] for c in collections) / total
        recall = np.mean([table[row][c]["R@100"] for c in collections])
        print(f"{row:<18}" + "".join(f"{v:>10.3f}" for v in ndcg) + f"{np.mean(ndcg):>9.3f}{micro:>9.3f}{recall:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(parser)
    parser.add_argument("--rules", default="", help="Comma-separated rules (default: the whole grid).")
    parser.add_argument(
        "--lexical-idf",
        choices=("own", "shared"),
        default="own",
        help="BM25 of every expert's list: its collection's own IDF, or all routed collections' (index/store/shared_idf.py)",
    )
    parser.add_argument(
        "--pairs", action="store_true", help="merge each query's own list with every other one as equals (see above)"
    )
    args = parser.parse_args()
    global LEXICAL_IDF
    LEXICAL_IDF = args.lexical_idf
    settings = Settings()
    engine = SearchEngine.open(settings.data_dir, open_encoder(settings), settings.engine_config())
    started = time.perf_counter()
    grid = ["top1", "rrf-2", "rrf-3"] + [
        f"{kind}-{m}-{b}-{n}"
        for kind in ("prior", "joint", "ojoint")
        for n in (2, 3, 5)
        for m in (0.3, 0.5, 1.0, 1.5, 3.0)
        for b in (0.0, 0.1, 0.25, 0.5)
    ]
    rules = [r for r in args.rules.split(",") if r] or grid
    base_rules = any(rule.split("-")[0] in ("bjoint", "objoint") for rule in rules)
    table: dict[str, dict[str, dict[str, float]]] = {rule: {} for rule in rules}
    counts = {}
    collections = split_collections(args)
    for name in collections:
        sources = None
        if args.split == "dev" and args.ad_hoc:
            queries, sources = dev_sample(engine, name, sample=args.dev_sample, seed=args.seed)
        else:
            queries = split_queries(engine, name, args)
        qrels = {q: {f"{name}/{d}": r for d, r in docs.items()} for q, docs in queries.qrels.items()}
        own = name if args.split == "dev-real" else None
        names, scores, lists = lists_and_scores(
            engine, queries.texts, 100, own_pilot=own, home=name, sources=sources, base_cosines=base_rules
        )
        counts[name] = len(queries.ids)
        routed_home = float(np.mean([names[int(np.argmax(row))] == name for row in scores]))
        print(f"{name}: {len(queries.ids)} {queries.origin}, routed home {routed_home:.1%}", flush=True)
        for rule in rules:
            if args.pairs:
                results = []
                for other in (n for n in names if n != name):
                    forced = np.zeros_like(scores)
                    forced[:, names.index(name)], forced[:, names.index(other)] = 1.0, 0.999
                    run = {q: merge(rule, names, forced, lists, i, 100) for i, q in enumerate(queries.ids)}
                    results.append(score_run(qrels, run))
                table[rule][name] = {m: float(np.mean([r[m] for r in results])) for m in results[0]}
                continue
            run = {q: merge(rule, names, scores, lists, i, 100) for i, q in enumerate(queries.ids)}
            table[rule][name] = score_run(qrels, run)
    title = f"{args.split}: nDCG@10 / R@100 per collection, macro and micro averages"
    print_table(f"{title} ({time.perf_counter() - started:.0f}s)", "rule", rules, table, collections, counts)


if __name__ == "__main__":
    main()
