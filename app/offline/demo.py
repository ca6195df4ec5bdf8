"""The demo: one expert per shared collection, built if missing, every test query routed, then served.

Idempotent: an expert that already has an index and pilots is reused, so a
second run goes straight to routing and serving (and needs the collections
only for the routing report). Beside the service, each expert first serves
with its untrained adapter, then is trained and swapped in live
(:mod:`app.offline.demo_training`); one trained already is never trained again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from app.engine.engine import SearchEngine
from app.engine.output import result_text
from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents, pilot_texts_from_queries
from app.offline.demo_training import demo_corpus, train_beside_service
from app.offline.evaluation import AVERAGE_KINDS, EvalReport, evaluate
from app.publishing.registry import RegistryEntry, RegistryFile
from app.settings import Settings
from experts import Encoder, ExpertDir, ExpertError, TrainConfig, create_expert
from experts.labelled import judged_queries, read_qrels, read_queries

logger = logging.getLogger(__name__)

#: The demo's closing report: routed search against what a user has without experts (``rr eval`` has the rest).
REPORT_SYSTEMS = ("bm25", "hybrid-union", "routed-hybrid")


def prepare_expert(
    settings: Settings,
    encoder: Encoder,
    collection: Path,
    *,
    max_docs: int | None,
    echo: Callable[[str], None],
    stage: Callable[[str], None] = lambda _: None,
) -> ExpertDir:
    """Create, index and give pilots to the expert named after ``collection``, skipping what is done.

    ``stage`` is told each step as it starts ("indexing", "building pilots").
    """
    name = collection.name
    directory = ExpertDir(settings.data_dir / name)
    if not directory.path.exists():
        create_expert(settings.data_dir, name, encoder=encoder, description=f"demo expert for {name}")
    manifest = directory.read_manifest()
    if manifest.index is None:
        stage("indexing" + (f" (first {max_docs} documents)" if max_docs else ""))
        echo(f"[{name}] indexing {collection / 'corpus.jsonl'}" + (f" (first {max_docs})" if max_docs else ""))
        corpus = demo_corpus(collection, directory.work_path("demo"), max_docs)
        manifest, report = index_expert(directory, encoder, [corpus])
        echo(f"[{name}] {report.documents} documents in {report.seconds:.0f}s")
    if manifest.pilots is None:
        stage("building pilots")
        train_qrels = collection / "qrels" / "train.tsv"
        if train_qrels.is_file():  # real training queries where the collection has them
            texts, source = pilot_texts_from_queries(collection / "queries.jsonl", train_qrels), "train queries"
        else:  # never the test queries: pseudo queries from the expert's own documents
            texts, source = pilot_texts_from_documents(directory, sample=1000), "pseudo queries"
        build_pilots(directory, encoder, texts, source=source, query_max_length=settings.query_max_length)
        echo(f"[{name}] pilots from {len(texts)} {source}")
    return directory


class DatasetsMissingError(FileNotFoundError):
    """The shared collections are not where the settings point; the message says what to point where."""


def _complete(directory: ExpertDir) -> bool:
    """An expert the demo already built: it has an index and pilots."""
    try:
        manifest = directory.read_manifest()
    except (ExpertError, OSError):
        return False
    return manifest.index is not None and manifest.pilots is not None


def _missing_collections_message(datasets: Path, names: Sequence[str]) -> str:
    return (
        f"the shared collections {list(names)} were not found under {datasets} (each needs <name>/corpus.jsonl). "
        "Point RR_DATASETS_DIR (or `rr demo --datasets DIR`) at the directory holding the BEIR collections, "
        "e.g. the shared/datasets directory beside this checkout"
    )


def missing_experts(settings: Settings, datasets: Path, collections: Sequence[str]) -> list[str]:
    """The demo experts not built yet, smallest corpus first (the first one serves soonest).

    Refuses, naming where to point, when their collections are absent.
    """
    todo = [name for name in collections if not _complete(ExpertDir(settings.data_dir / name))]
    absent = [name for name in todo if not (datasets / name / "corpus.jsonl").is_file()]
    if absent:
        raise DatasetsMissingError(_missing_collections_message(datasets, absent))
    return sorted(todo, key=lambda name: (datasets / name / "corpus.jsonl").stat().st_size)


def build_beside_service(
    settings: Settings,
    encoder: Encoder,
    datasets: Path,
    todo: Sequence[str],
    *,
    max_docs: int | None,
    publish: Callable[[str], None],
    progress: Callable[[str, str | None], None],
    stopping: Callable[[], bool],
    echo: Callable[[str], None] = print,
    built: Callable[[], None] = lambda: None,
    train: Sequence[str] = (),
    training: TrainConfig = TrainConfig(),
    swap_in: Callable[[Path], None] | None = None,
) -> list[str]:
    """Build the experts ``todo`` one after another while the service serves, publishing each when it is complete,
    and train the experts ``train`` one after another on a second thread, each as soon as it serves, swapping each
    trained version in as it is done.

    Why two threads: on 2 cores the training runs torch on one thread, and the service's passes (indexing
    among them) get one thread fewer while it runs (``RR_TORCH_THREADS=auto``, experts.torch_threads), so
    indexing one expert while training the one before keeps both cores busy; the training works on its own copy of the model,
    so the two never wait for each other's lock (docs/benchmarks.md, section 19: the whole demo in 857 s
    instead of 1304). ``progress(name, doing)`` says what each is doing (None: done); ``publish(name)`` puts a
    complete expert into service (the publisher's atomic add: searches never see half an expert); ``stopping()``
    is checked between steps, so a server shutting down ends the build at the next step (an interrupted index
    resumes on the next run). ``train`` (:func:`~app.offline.demo_training.untrained_experts`; empty for
    ``rr demo --no-train``) are trained with ``training`` and published by ``swap_in(directory)``, the
    publisher's replace (see :func:`~app.offline.demo_training.train_beside_service`); those already serving
    start at once, the others once published, and one whose build failed is never trained. ``built()`` is called
    once every expert is built (``rr demo`` prints its routing report there), while training goes on. Returns the
    experts published; training has ended (or stopped) when it returns.
    """
    if train and swap_in is None:
        raise ValueError("training the demo experts needs swap_in, the publisher's replace, to publish them")
    for name in train:
        if name not in todo:
            progress(name, "queued for training")
    trainer = None
    if train and swap_in is not None:  # (checked above: train needs swap_in)
        trainer = _Trainer(settings, encoder, datasets, max_docs, training, swap_in, progress, stopping, echo)
        trainer.start([name for name in train if name not in todo])
    published: list[str] = []
    try:
        for name in todo:
            if stopping():
                break
            started = time.perf_counter()

            def stage(doing: str, name: str = name) -> None:
                progress(name, doing)

            try:
                prepare_expert(settings, encoder, datasets / name, max_docs=max_docs, echo=echo, stage=stage)
                if stopping():
                    break
                progress(name, "publishing")
                publish(name)
            except Exception as exc:  # one expert that cannot be built must not stop the others
                logger.exception("building the demo expert %s failed", name)
                progress(name, f"failed: {exc}")
                continue
            published.append(name)
            echo(f"[{name}] serving now (built in {time.perf_counter() - started:.0f}s)")
            if name in train and trainer is not None:
                progress(name, "queued for training")
                trainer.add(name)
            else:
                progress(name, None)
        if not stopping():
            built()
    finally:
        if trainer is not None:
            trainer.finish()
    return published


class _Trainer:
    """:func:`~app.offline.demo_training.train_beside_service` on its own thread, fed expert by expert."""

    def __init__(
        self,
        settings: Settings,
        encoder: Encoder,
        datasets: Path,
        max_docs: int | None,
        config: TrainConfig,
        swap_in: Callable[[Path], None],
        progress: Callable[[str, str | None], None],
        stopping: Callable[[], bool],
        echo: Callable[[str], None],
    ) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(
            target=train_beside_service,
            args=(settings, encoder, datasets, self._names()),
            kwargs={
                "max_docs": max_docs,
                "config": config,
                "swap_in": swap_in,
                "progress": progress,
                "stopping": stopping,
                "echo": echo,
            },
            name="demo-training",
            daemon=True,
        )

    def _names(self) -> Iterator[str]:
        while (name := self._queue.get()) is not None:
            yield name

    def start(self, ready: Sequence[str]) -> None:
        """Start training, with the experts ``ready`` (already serving, untrained) first."""
        for name in ready:
            self._queue.put(name)
        self._thread.start()

    def add(self, name: str) -> None:
        """Train ``name`` (now serving) after those before it."""
        self._queue.put(name)

    def finish(self) -> None:
        """No more experts: wait until the ones queued are trained (or the training stopped)."""
        self._queue.put(None)
        self._thread.join()


def prepare_demo(
    settings: Settings,
    encoder: Encoder,
    datasets: Path,
    collections: Sequence[str],
    *,
    max_docs: int | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Build every demo expert that is not complete yet; the collections are needed only for those."""
    for name in missing_experts(settings, datasets, collections):
        prepare_expert(settings, encoder, datasets / name, max_docs=max_docs, echo=echo)


def report_routing(
    engine: SearchEngine, datasets: Path, collections: Sequence[str], *, echo: Callable[[str], None] = print
) -> dict[str, float]:
    """Route every judged test query with ``engine`` (the serving one); print and return the share routed to its
    own collection's expert, with one example result per collection."""
    accuracy: dict[str, float] = {}
    echo("\nrouting of each collection's test queries (share sent to its own expert):")
    for name in collections:
        test = datasets / name / "qrels" / "test.tsv"
        if not test.is_file():
            echo(f"  {name:<10} skipped: {test} not found")
            continue
        queries = read_queries(datasets / name / "queries.jsonl")
        texts = list(judged_queries(queries, read_qrels(test)).values())
        decisions = engine.route(texts)
        counts = Counter(d.experts[0] for d in decisions)
        accuracy[name] = counts[name] / len(texts)
        spread = ", ".join(f"{expert} {count}" for expert, count in counts.most_common())
        echo(f"  {name:<10} {accuracy[name]:6.1%} of {len(texts)}  ({spread})")
        example = engine.search(texts[:1], k=3).results[0]
        echo(result_text(example))
    return accuracy


def report_quality(
    engine: SearchEngine, datasets: Path, collections: Sequence[str], *, echo: Callable[[str], None] = print
) -> EvalReport | None:
    """What routing buys, printed: nDCG@10 of routed hybrid search against BM25 and one hybrid index over all
    ``collections`` with the base encoder, per collection and averaged, and each collection's routing share.

    ``rr eval``'s own code (:func:`~app.offline.evaluation.evaluate`) on each collection's judged test
    queries, limited to those three systems; routing shares come from the routed searches themselves, so they
    are the decisions ``/search`` makes. Collections without test qrels are left out; None when none has them.
    """
    judged = [name for name in collections if (datasets / name / "qrels" / "test.tsv").is_file()]
    if not judged:
        echo("\nquality report skipped: no collection has qrels/test.tsv")
        return None
    started = time.perf_counter()
    report = evaluate(engine, datasets, judged, constructions=(), systems=REPORT_SYSTEMS)
    systems = report.systems
    if not systems:
        echo("\nquality report skipped: the experts have no BM25 index to compare with")
        return None
    titles = {"bm25": "BM25"}  # the others by their rr eval names
    echo(
        f"\nwhat routing buys: nDCG@10 on each collection's judged test queries ({time.perf_counter() - started:.0f}s)"
        "\n  (hybrid-union: base encoder + BM25 in one index of every collection, what any vector database gives)"
    )
    echo(
        "  "
        + f"{'collection':<12}{'queries':>8}"
        + "".join(f"{titles.get(s, s):>15}" for s in systems)
        + "  routed to own"
    )
    accuracy = report.routing_accuracy
    for name in judged:
        cells = "".join(f"{report.metrics[s][name]['nDCG@10']:>15.3f}" for s in systems)
        echo(f"  {name:<12}{report.queries[name]:>8}{cells}  {accuracy[name]:>13.1%}")
    for kind in AVERAGE_KINDS:
        cells = "".join(f"{report.average(s, 'nDCG@10', kind):>15.3f}" for s in systems)
        share = f"  {accuracy['all']:>13.1%}" if kind == "micro" else ""
        echo(f"  {kind + ' average':<20}{cells}{share}")
    return report


def run_demo(
    settings: Settings,
    encoder: Encoder,
    datasets: Path,
    collections: Sequence[str],
    *,
    max_docs: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Build the demo experts, then print what routing buys (:func:`report_quality`) on every judged test query.

    Returns routing accuracy per collection (the share of its test queries
    routed to its own expert). Without the collections, experts built earlier
    are kept and the report is skipped.
    """
    prepare_demo(settings, encoder, datasets, collections, max_docs=max_docs, echo=echo)
    if not all((datasets / name / "corpus.jsonl").is_file() for name in collections):
        echo("\nquality report skipped: " + _missing_collections_message(datasets, collections))
        return {}
    if max_docs is not None:
        echo(f"\n(--max-docs {max_docs}: relevant documents beyond it are missing, so every system scores lower)")
    engine = SearchEngine.open(settings.data_dir, encoder, settings.engine_config())
    try:
        report = report_quality(engine, datasets, collections, echo=echo)
    finally:
        engine.close()
    return {} if report is None else {c: v for c, v in report.routing_accuracy.items() if c != "all"}


def publish_demo(settings: Settings, collections: Sequence[str]) -> None:
    """Make sure the service publishes the demo experts: add them to an existing registry file.

    With no registry file yet the service publishes every expert under the
    root on its first start, the demo's included, so nothing is written then.
    """
    registry = RegistryFile(settings.data_dir)
    entries = registry.read()
    if entries is None:
        return
    published = {entry.name for entry in entries}
    added = [RegistryEntry(name=name, path=name) for name in collections if name not in published]
    if added:
        registry.write([*entries, *added])
