"""The quality gate before a swap: the candidate and the serving version scored on one query set.

A replace may name an evaluation set, labelled (``QUERIES:QRELS``, a BEIR
``queries.jsonl`` and a qrels ``.tsv`` under the data root) or ``pseudo``
(pseudo queries drawn, with the gate's own seed, from a sample of the serving
version's documents: each query is a span of one document, which is its one
relevant document). Both versions are searched as they would serve, each with
its own adapter and its own index (hybrid when the index has BM25, at the
expert's own fusion weight), and scored with nDCG@10 and Recall@100
(ir-measures). The swap is refused, with both figures, when the candidate's
nDCG@10 is lower than the serving one's by more than the margin
(RR_GATE_MARGIN, or the request's own).

Relevance is judged by document id, never by row id: the two versions number
their rows differently. Every judged document must be held by both versions,
otherwise the comparison would punish (or spare) one of them for a document it
cannot return, so such a set is refused (422) with the documents named.

``rr train-expert --replace --gate`` runs the same gate between the serving
directory and the staged one (:func:`gate_directories`) and writes the record
into the new version's directory (``gate.json``, :data:`GATE_FILE`); a
service publishing that directory without a gate of its own takes it from
there (:func:`read_gate_file`).

Pseudo queries are spans of text, never titles: training uses every title as a
query (and spans drawn with the training seed), so titles would measure what
the adapter memorised. The same seed gives the same set for both versions.

>>> spec = parse_gate("pseudo", Path("data/experts"), margin=0.01)  # doctest: +SKIP
>>> record = run_gate(encoder, spec, serving, candidate, retrieval=Retrieval())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import ir_measures
from ir_measures import R, nDCG

from app.engine.engine import SearchEngine
from app.engine.loading import LoadedExpert, load_expert, unload_expert
from app.engine.retrieval import Retrieval, RetrievalOptions, expert_retrieval, search_collection
from app.errors import GateRefusedError, InvalidRequestError
from app.publishing.data_paths import data_file
from app.publishing.registry import GateFigures, GateRecord
from experts import Encoder, atomic_write_bytes
from experts.labelled import LabelledDataError, judged_queries, read_qrels, read_queries
from experts.pseudo_queries import pseudo_queries

logger = logging.getLogger(__name__)

#: The gate record ``rr train-expert --gate`` leaves in the version's directory (not in the manifest's checksums).
GATE_FILE = "gate.json"
#: The gate value that draws pseudo queries from the serving version's documents.
PSEUDO = "pseudo"
#: Queries scored per gate (a seeded sample above it): a stable mean in a few seconds on a CPU.
GATE_QUERIES = 200
#: Seed of the pseudo-query sample (documents and spans); fixed, so one set scores both versions.
GATE_SEED = 1009
#: How deep each version is searched: Recall@100 needs 100 hits.
DEPTH = 100
#: Judged documents a 422 names (a set may miss thousands).
NAMED_MISSING = 10
_NDCG, _RECALL = nDCG @ 10, R @ 100
_VALID = "'pseudo', or 'QUERIES:QRELS' (a BEIR queries.jsonl and a qrels .tsv, relative to the data root)"


@dataclass(frozen=True)
class GateSpec:
    """A parsed gate: ``pseudo``, or labelled files resolved under the data root; and the margin to apply."""

    set: str
    margin: float
    queries: Path | None = None
    qrels: Path | None = None


@dataclass(frozen=True)
class GateQueries:
    """Query texts and, per query, the judged documents by corpus id (``{doc_id: grade}``)."""

    texts: list[str]
    relevant: list[dict[str, int]]


def parse_gate(value: str, root: Path, *, margin: float) -> GateSpec:
    """``pseudo`` or ``QUERIES:QRELS`` (files under ``root``) as a :class:`GateSpec`; a bad value is a 422 or 403."""
    if not 0.0 <= margin <= 1.0 or math.isnan(margin):
        raise InvalidRequestError(f"gate margin must be between 0 and 1 (nDCG@10 points), got {margin}")
    if value == PSEUDO:
        return GateSpec(PSEUDO, margin)
    parts = value.split(":")
    if len(parts) != 2 or not all(parts):
        raise InvalidRequestError(f"Invalid gate {value!r}. Valid gates are: {_VALID}")
    queries, qrels = (_data_file(part, root, role) for part, role in zip(parts, ("queries", "qrels"), strict=True))
    return GateSpec(value, margin, queries, qrels)


def gate_spec(
    gate: str | None, root: Path, *, margin: float | None, default_margin: float, replace: bool
) -> GateSpec | None:
    """A request's gate checked before anything is loaded (None: no gate); only a replace has something to compare."""
    if gate is None:
        return None
    if not replace:
        raise InvalidRequestError(f"a gate ({gate!r}) compares a replace with the serving version: add replace")
    return parse_gate(gate, root, margin=default_margin if margin is None else margin)


def _data_file(path: str, root: Path, role: str) -> Path:
    """A gate file named by the caller: under the data root once links are followed, and a file."""
    return data_file(path, root, what=f"gate {role} file")


def gate_queries(
    spec: GateSpec, source: LoadedExpert, *, limit: int = GATE_QUERIES, seed: int = GATE_SEED
) -> GateQueries:
    """The gate's queries: the labelled files' judged queries, or pseudo queries from ``source``'s documents.

    At most ``limit`` (a seeded sample); pseudo ones come from the published
    generation of ``source`` (the serving version).
    """
    rng = random.Random(seed)
    if spec.queries is not None and spec.qrels is not None:
        try:
            qrels = read_qrels(spec.qrels)
            texts = judged_queries(read_queries(spec.queries), qrels)
        except LabelledDataError as exc:
            raise InvalidRequestError(f"gate {spec.set!r} cannot be read: {exc}") from exc
        ids = list(texts)
        if len(ids) > limit:
            ids = sorted(rng.sample(ids, limit), key=ids.index)
        relevant = [{doc: grade for doc, grade in qrels[qid].items() if grade > 0} for qid in ids]
        chosen = GateQueries([texts[qid] for qid in ids], relevant)
    else:
        docstore = source.collection.docstore
        rows = docstore.all_row_ids().tolist()
        sample = sorted(rng.sample(rows, min(len(rows), limit)))
        documents = [doc for doc in docstore.get(sample) if doc is not None and doc.text.split()]
        spans = pseudo_queries([("", doc.text) for doc in documents], seed=seed)  # one span per document with words
        chosen = GateQueries(spans, [{doc.id: 1} for doc in documents])
    if not chosen.texts:
        raise InvalidRequestError(f"gate {spec.set!r} has no query with a relevant document: there is nothing to score")
    return chosen


def check_held(queries: GateQueries, expert: LoadedExpert, role: str) -> None:
    """Refuse (422) a set judging documents ``expert`` does not hold, naming some of them."""
    judged = sorted({doc for relevant in queries.relevant for doc in relevant})
    rows = expert.collection.docstore.row_ids(judged)
    missing = [doc for doc, row in zip(judged, rows, strict=True) if row is None]
    if missing:
        raise InvalidRequestError(
            f"the gate set judges {len(missing)} documents that the {role} version (v{expert.manifest.version}) "
            f"of expert {expert.name!r} does not hold, e.g. {missing[:NAMED_MISSING]}; "
            "judge only documents both versions hold",
            details={"missing": missing[:NAMED_MISSING], "version": role},
        )


def served_retrieval(expert: LoadedExpert, default: Retrieval) -> Retrieval:
    """How the gate searches ``expert``: hybrid at its own fusion weight as served, or dense without a BM25 index."""
    retrieval = expert_retrieval(default, expert.manifest.retrieval)
    return RetrievalOptions(mode="hybrid" if expert.collection.has_lexical else "dense").over(retrieval)


def score_expert(
    encoder: Encoder, expert: LoadedExpert, queries: GateQueries, *, retrieval: Retrieval, max_length: int = 64
) -> tuple[float, float]:
    """Mean (nDCG@10, Recall@100) of ``expert`` on ``queries``, searched with its own adapter and index.

    Every query counts: one without hits scores 0 (ir-measures alone would leave it out of the mean).
    ``bulk=True``: searches' encoder passes go first between the gate's.
    """
    vectors = encoder.embed(queries.texts, expert=expert.adapter, max_length=max_length, bulk=True)
    found = search_collection(expert.view(), queries.texts, vectors, [(DEPTH, retrieval)] * len(queries.texts))
    run: dict[str, dict[str, float]] = {}
    for q, hits in enumerate(found):
        ranking = run.setdefault(str(q), {})
        for hit in hits:  # a document is listed once; keep its best score if a view lists it twice
            ranking[hit.id] = max(ranking.get(hit.id, -math.inf), float(hit.score))
    qrels = {str(q): relevant for q, relevant in enumerate(queries.relevant)}
    totals = {_NDCG: 0.0, _RECALL: 0.0}
    for metric in ir_measures.iter_calc([_NDCG, _RECALL], qrels, {q: r for q, r in run.items() if r}):
        totals[metric.measure] += float(metric.value)
    count = len(queries.texts)
    return totals[_NDCG] / count, totals[_RECALL] / count


def run_gate(
    encoder: Encoder,
    spec: GateSpec,
    serving: LoadedExpert | None,
    candidate: LoadedExpert,
    *,
    retrieval: Retrieval,
    max_length: int = 64,
    limit: int = GATE_QUERIES,
) -> GateRecord:
    """Score both versions on the spec's set; the record if the candidate passes, else GateRefusedError (409).

    With no serving version (it failed to load) only the candidate is scored, and it passes.
    """
    queries = gate_queries(spec, serving or candidate, limit=limit)
    for expert, role in ((serving, "serving"), (candidate, "candidate")):
        if expert is not None:
            check_held(queries, expert, role)
    modes = set()
    figures: dict[str, GateFigures] = {}
    for expert, role in ((serving, "serving"), (candidate, "candidate")):
        if expert is None:
            continue
        how = served_retrieval(expert, retrieval)
        modes.add(how.mode)
        ndcg, recall = score_expert(encoder, expert, queries, retrieval=how, max_length=max_length)
        figures[role] = GateFigures(
            version=expert.manifest.version, ndcg_at_10=round(ndcg, 6), recall_at_100=round(recall, 6)
        )
    before, after = figures.get("serving"), figures["candidate"]
    # A tolerance far below any real difference: the same version scored twice must pass at margin 0.
    passed = before is None or after.ndcg_at_10 >= before.ndcg_at_10 - spec.margin - 1e-9
    record = GateRecord(
        set=spec.set,
        queries=len(queries.texts),
        mode="+".join(sorted(modes)),
        margin=spec.margin,
        candidate=after,
        serving=before,
        passed=passed,
    )
    logger.info(
        "gate for expert %r (%s, %d queries): candidate nDCG@10 %.4f, serving %s, margin %.3f: %s",
        candidate.name,
        spec.set,
        record.queries,
        after.ndcg_at_10,
        "none" if before is None else f"{before.ndcg_at_10:.4f}",
        spec.margin,
        "passed" if passed else "refused",
    )
    if not passed and before is not None:
        raise GateRefusedError(
            f"expert {candidate.name!r} v{after.version} was not published: its nDCG@10 on the gate set "
            f"{spec.set!r} ({record.queries} queries) is {after.ndcg_at_10:.4f}, below the serving v{before.version}'s "
            f"{before.ndcg_at_10:.4f} by {before.ndcg_at_10 - after.ndcg_at_10:.4f}, more than the margin "
            f"{spec.margin} (Recall@100 {after.recall_at_100:.4f} against {before.recall_at_100:.4f}); "
            "the serving version keeps serving",
            details=record.model_dump(mode="json"),
        )
    return record


def gate_swap(
    engine: SearchEngine, spec: GateSpec, serving: LoadedExpert | None, candidate: LoadedExpert, *, limit: int
) -> GateRecord:
    """:func:`run_gate` with the engine's encoder and search settings; a refused (or failed) candidate is unloaded."""
    try:
        return run_gate(
            engine.encoder,
            spec,
            serving,
            candidate,
            retrieval=engine.retrieval,
            max_length=engine.query_max_length,
            limit=limit,
        )
    except BaseException:
        unload_expert(candidate, engine.encoder)
        raise


def gate_directories(
    encoder: Encoder,
    spec: GateSpec,
    serving: Path | None,
    candidate: Path,
    *,
    retrieval: Retrieval,
    max_length: int = 64,
    limit: int = GATE_QUERIES,
) -> GateRecord:
    """:func:`run_gate` on two expert directories, loaded read-only for it and unloaded after (``rr train-expert``).

    ``serving`` None (or not an expert yet): only the candidate is scored.
    """
    loaded: list[LoadedExpert] = []
    try:
        old = None
        if serving is not None and serving.is_dir():
            old = load_expert(serving, encoder, verify_checksums=False)
            loaded.append(old)
        new = load_expert(candidate, encoder, verify_checksums=False)
        loaded.append(new)
        return run_gate(encoder, spec, old, new, retrieval=retrieval, max_length=max_length, limit=limit)
    finally:
        for expert in loaded:
            unload_expert(expert, encoder)


def write_gate_file(directory: Path, record: GateRecord) -> None:
    """Leave ``record`` in the version's directory, for the service that publishes it."""
    atomic_write_bytes(Path(directory) / GATE_FILE, record.model_dump_json(indent=2).encode() + b"\n")


def read_gate_file(directory: Path, version: int) -> GateRecord | None:
    """The record ``rr train-expert --gate`` left in ``directory`` for manifest ``version``; None without one.

    A record of another version (the directory was published again in place since) is not this version's: None.
    """
    path = Path(directory) / GATE_FILE
    try:
        record = GateRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None
    return record if record.candidate.version == version else None
