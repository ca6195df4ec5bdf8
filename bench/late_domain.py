"""What does publishing one more expert cost the routing of the others? Each collection in turn plays the late domain.

Run by hand (not in CI), on a root holding one expert per shared collection
(expert name = collection folder name), e.g. the demo's::

    RR_DATA_DIR=data/experts python bench/late_domain.py --datasets ../shared/datasets --split dev
    RR_DATA_DIR=data/experts python bench/late_domain.py --datasets ../shared/datasets --split test

For every collection ``L`` of the five, the queries of the four others are
routed twice: by a router holding the four (their pilots, their documents'
votes) and by one holding all five. The difference is what publishing ``L``
later costs them, which is what issue 17 bounds (one point of routing). The
evidence is gathered once per query (each expert's nearest pilots, each
collection's best dense and BM25 scores), then every subset and every
variant of the evidence is scored without another search. Variants:

- ``count``: today's router: the 5-nearest-pilot vote plus each collection's
  share of the ``depth`` best documents, dense and BM25 (one IDF over all
  five collections: :mod:`index.store.shared_idf`), all summed.
- ``best-m-t[-l]``: the pilot vote plus, for dense and for BM25, a softmax at
  temperature ``t`` (BM25: ``l``, default 10 t) over the collections of the
  mean of each one's ``m`` best scores (BM25 divided by the best
  collection's). A share of the top documents grows with a collection's size
  (a larger collection holds more near documents); its best few scores
  hardly do.
- ``ubest-m-t-l-D``: the same from only the ``D`` best scores over all
  collections, the rest filled with the ``D``-th: what the service computes
  (``RR_ROUTER_VOTE_RULE=best``, :func:`router.best_score_votes`).
- any of them ``@w``: the pilot vote weighed ``w`` instead of 1.

``--split dev``: pseudo queries of documents outside the pilots' sample and
scifact's labelled train queries (each one's own pilot taken off, since they
are scifact's pilots); with ``--ad-hoc`` each pseudo query's source document
is left out of the votes, so it is routed by the other documents, as a real
query is (with it in, rules that favour one near document win for that
alone). ``test``: the test queries (reported, never chosen on). ``unjudged``:
the real queries that no qrels file judges (cacm 12, cisi 36; the other
collections have none), so never test queries, with a known collection but no
relevant documents: a small real check of routing between the two collections
that confuse each other most. Nothing here changes the service.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.offline.evaluation import read_test_set  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.merge_tuning import COLLECTIONS, dev_sample  # noqa: E402
from experts.labelled import read_qrels, read_queries  # noqa: E402
from router import expert_list_votes  # noqa: E402

#: How many of a collection's best scores, and nearest pilots, are kept per query.
KEEP = 100


def _without(found: tuple[np.ndarray, np.ndarray], sources: list[int] | None) -> np.ndarray:
    """The scores of a search, the query's source document's taken off (known-item queries made ad hoc)."""
    scores, ids = found
    if sources is None:
        return scores[:, :KEEP]
    scores = np.where(ids == np.asarray(sources)[:, None], -np.inf, scores)
    return -np.sort(-scores, axis=1)[:, :KEEP]


def evidence(
    engine: SearchEngine,
    names: list[str],
    texts: list[str],
    *,
    own_pilot: str | None = None,
    home: str | None = None,
    sources: list[int] | None = None,
) -> dict:
    """Per query: the owners and similarities of its KEEP nearest pilots; per collection its KEEP best scores.

    ``sources``: each query's source document in collection ``home``, left out of the scores.
    """
    base = engine.encoder.embed(texts, max_length=engine.query_max_length)
    router = engine.router
    pilots = np.concatenate([router.pilots(name) for name in names])
    owner = np.concatenate([np.full(len(router.pilots(name)), e) for e, name in enumerate(names)])
    similarity = base @ pilots.T
    if own_pilot is not None:  # the query is one of these pilots: take the copy of itself off
        own = names.index(own_pilot)
        for row in similarity:
            best = int(np.argmax(np.where(owner == own, row, -np.inf)))
            if row[best] > 0.999:
                row[best] = -np.inf
    nearest = np.argsort(-similarity, axis=1)[:, :KEEP]
    dense, lexical = [], []
    with engine._holder.lease() as snapshot:
        shared = snapshot.shared_idf
        for name in names:
            view = engine.experts[name].view()
            drop = sources if name == home else None
            dense.append(_without(view.search_dense(base, KEEP + 10), drop))
            lexical.append(_without(view.search_lexical(texts, KEEP + 10, shared_idf=shared), drop))
    return {
        "pilot_owner": owner[nearest],
        "pilot_sim": np.take_along_axis(similarity, nearest, axis=1),
        "dense": np.stack(dense, axis=1).astype(np.float64),  # (n, E, KEEP), -inf padded
        "lexical": np.stack(lexical, axis=1).astype(np.float64),
    }


def pilot_votes(ev: dict, subset: list[int], neighbours: int) -> np.ndarray:
    owner = ev["pilot_owner"]
    votes = np.zeros((len(owner), len(subset)), dtype=np.float64)
    column = {e: i for i, e in enumerate(subset)}
    for q, row in enumerate(owner):
        taken = [column[e] for e in row if e in column][:neighbours]
        for c in taken:
            votes[q, c] += 1.0 / len(taken)
    return votes


def best_votes(scores: np.ndarray, subset: list[int], m: int, temperature: float, *, relative: bool) -> np.ndarray:
    part = scores[:, subset, :m]
    part = np.where(np.isfinite(part), part, 0.0).mean(axis=2)
    if relative:
        part = part / np.maximum(part.max(axis=1, keepdims=True), 1e-9)
    weights = np.exp((part - part.max(axis=1, keepdims=True)) / temperature)
    return weights / weights.sum(axis=1, keepdims=True)


def _union_view(scores: np.ndarray, subset: list[int], depth: int) -> np.ndarray:
    """Each collection's best scores among the ``depth`` best of all, the rest set to the ``depth``-th score."""
    part = scores[:, subset, :depth]
    n, e, m = part.shape
    flat = np.sort(part.reshape(n, e * m), axis=1)[:, ::-1]
    floor = flat[:, depth - 1 : depth]
    floor = np.where(np.isfinite(floor), floor, 0.0)
    return np.where(part >= floor[:, :, None], part, floor[:, :, None])


def route(ev: dict, subset: list[int], variant: str, neighbours: int, depth: int) -> np.ndarray:
    """The top expert (an index into ``subset``) of every query, by ``variant``."""
    variant, _, weight = variant.partition("@")  # "@w": the pilot vote weighed w (1 by default)
    total = pilot_votes(ev, subset, neighbours) * (float(weight) if weight else 1.0)
    if variant == "count":  # the service's share rule, on each collection's own best `depth`
        for key, kind in (("dense", "dense"), ("lexical", "lexical")):
            lists = [ev[key][:, e, :depth] for e in subset]
            total += expert_list_votes(lists, depth=depth, rule="share", kind=kind)  # type: ignore[arg-type]
        return np.argmax(total, axis=1)
    name, m, t, *rest = variant.split("-")
    lexical_t = float(rest[0]) if rest else float(t) * 10
    for key, temperature, relative in (("dense", float(t), False), ("lexical", lexical_t, True)):
        if name == "ubest":  # as the service sees them: only the union's `depth` best, the rest filled
            scores, columns = _union_view(ev[key], subset, int(rest[1])), list(range(len(subset)))
        else:
            scores, columns = ev[key], subset
        total += best_votes(scores, columns, int(m), temperature, relative=relative)
    return np.argmax(total, axis=1)


def unjudged_queries(datasets: Path, name: str) -> list[str]:
    """The texts of ``name``'s queries that no qrels file (test or train) judges."""
    folder = datasets / name
    judged = {query for path in (folder / "qrels").glob("*.tsv") for query in read_qrels(path)}
    return [text for query, text in read_queries(folder / "queries.jsonl").items() if query not in judged]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, required=True)
    parser.add_argument("--split", choices=("dev", "test", "unjudged"), default="dev")
    parser.add_argument("--dev-sample", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--variants", default="count," + ",".join(f"best-{m}-{t}" for m in (1, 3, 10) for t in (0.01, 0.02, 0.05))
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--ad-hoc",
        action="store_true",
        help="dev: leave each pseudo query's source document out of the votes, so that it is routed by the others",
    )
    args = parser.parse_args()
    settings = Settings()
    engine = SearchEngine.open(settings.data_dir, open_encoder(settings), settings.engine_config())
    names = sorted(engine.experts)
    assert names == sorted(COLLECTIONS), names
    started = time.perf_counter()
    gathered: dict[str, list[dict]] = {name: [] for name in names}
    for name in names:
        if args.split == "dev":
            queries, sources = dev_sample(engine, name, sample=args.dev_sample, seed=args.seed)
            texts = list(queries.texts)
            gathered[name].append(evidence(engine, names, texts, home=name, sources=sources if args.ad_hoc else None))
            if name == "scifact":
                train = read_test_set(args.datasets, name, split="train")
                gathered[name].append(evidence(engine, names, list(train.texts), own_pilot=name))
        elif args.split == "unjudged":
            if texts := unjudged_queries(args.datasets, name):
                gathered[name].append(evidence(engine, names, texts))
        else:
            gathered[name].append(evidence(engine, names, list(read_test_set(args.datasets, name).texts)))
        print(f"{name}: evidence of {sum(len(ev['dense']) for ev in gathered[name])} queries", flush=True)
    variants = [v for v in args.variants.split(",") if v]
    neighbours, depth = engine.router.neighbours, engine.vote_depth
    results: dict[str, dict] = {}
    for variant in variants:
        row: dict[str, dict] = {}
        for late in [None, *names]:
            subset = [e for e, name in enumerate(names) if name != late]
            with_late = list(range(len(names)))
            home_acc, plus_acc = {}, {}
            for e in subset:
                hits_alone, hits_plus, n = 0, 0, 0
                for ev in gathered[names[e]]:
                    hits_alone += int((np.asarray(subset)[route(ev, subset, variant, neighbours, depth)] == e).sum())
                    hits_plus += int((route(ev, with_late, variant, neighbours, depth) == e).sum())
                    n += len(ev["dense"])
                if not n:
                    continue  # --split unjudged: a collection whose queries are all judged
                home_acc[names[e]], plus_acc[names[e]] = hits_alone / n, hits_plus / n
            row[late or "none"] = {
                "alone": float(np.mean(list(home_acc.values()))),
                "with_late": float(np.mean(list(plus_acc.values()))),
                "per_collection_alone": home_acc,
                "per_collection_with_late": plus_acc,
            }
        if args.split == "dev":  # the real queries alone: scifact's train queries, routed by all five
            row["real"] = float(
                np.mean(
                    route(gathered["scifact"][1], list(range(len(names))), variant, neighbours, depth)
                    == names.index("scifact")
                )
            )
        results[variant] = row
        drops = [row[late]["alone"] - row[late]["with_late"] for late in names]
        print(
            f"{variant:<14} all five {row['none']['alone']:.1%}  "
            + "  ".join(f"-{late}: {row[late]['alone']:.1%}->{row[late]['with_late']:.1%}" for late in names)
            + f"  mean drop {np.mean(drops) * 100:.2f} max {np.max(drops) * 100:.2f}"
            + (f"  scifact train {row['real']:.1%}" if "real" in row else "")
            + "  "
            + " ".join(f"{k[:4]} {v:.1%}" for k, v in row["none"]["per_collection_alone"].items()),
            flush=True,
        )
    print(f"({time.perf_counter() - started:.0f}s)")
    if args.json:
        args.json.write_text(
            json.dumps({"command": " ".join(sys.argv), "split": args.split, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
