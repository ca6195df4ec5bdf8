"""``rr``: the single command-line entry point. Each subcommand parses its options and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from app.settings import Settings

cli = typer.Typer(
    name="rr",
    help="Expert-routing retrieval: build experts (LoRA adapter + pilots + index) and search them, routed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _State:
    settings: Settings
    _encoder = None

    def encoder(self):
        """The base encoder, loaded on first use (listing experts needs no model)."""
        if self._encoder is None:
            from app.engine.loading import open_encoder

            self._encoder = open_encoder(self.settings)
        return self._encoder

    def expert_dir(self, name: str):
        from experts import ExpertDir, UnknownExpertError, check_expert_name, list_expert_dirs

        check_expert_name(name)
        directory = ExpertDir(self.settings.data_dir / name)
        if not directory.path.is_dir():
            known = [d.path.name for d in list_expert_dirs(self.settings.data_dir)]
            raise UnknownExpertError(f"Expert {name!r} not found under {self.settings.data_dir}. Experts: {known}")
        return directory

    def engine(self):
        from app.engine.engine import SearchEngine

        return SearchEngine.open(
            self.settings.data_dir,
            self.encoder(),
            self.settings.engine_config(),
            verify_checksums=self.settings.verify_checksums,
        )


state = _State()


@cli.callback()
def _configure(
    data_dir: Annotated[Path | None, typer.Option(help="Experts root (env RR_DATA_DIR).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base encoder id or path (env RR_BASE_MODEL).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    overrides: dict[str, Any] = {
        k: v for k, v in {"data_dir": data_dir, "base_model": base_model}.items() if v is not None
    }
    state.settings = Settings(**overrides)
    state._encoder = None
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _policy(top_k: int | None, fanout_margin: float | None, min_score: float | None, merge: str | None):
    """The settings' routing policy (RR_ROUTE_*) with the options given on the command line."""
    return state.settings.route_policy().updated(
        top_k=top_k, fanout_margin=fanout_margin, min_score=min_score, merge=merge
    )


TopK = Annotated[
    int | None,
    typer.Option("--top-k", min=1, help="Most experts searched when fanning out or falling back (env RR_ROUTE_TOP_K)."),
]
FanoutMargin = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="Fan out to the experts among --top-k within this of the top router score (env RR_ROUTE_FANOUT_MARGIN).",
    ),
]
MinScore = Annotated[float | None, typer.Option(help="Use the base encoder when the best router score is below this.")]
Merge = Annotated[str | None, typer.Option(help="How a fan-out's lists become one: score or rrf (env RR_ROUTE_MERGE).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@cli.command("create-expert")
def create_expert_command(
    name: Annotated[str, typer.Argument(help="Expert name: a-z, 0-9, '-', '_'.")],
    adapter: Annotated[
        Path | None, typer.Option(help="A PEFT LoRA adapter directory to use; default: a new untrained one.")
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank of a new adapter.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha of a new adapter.")] = 32,
    description: Annotated[str, typer.Option(help="Free text shown in listings.")] = "",
) -> None:
    """Create an expert directory (adapter + manifest) under the experts root."""
    from experts import create_expert

    expert = create_expert(
        state.settings.data_dir,
        name,
        encoder=state.encoder(),
        adapter_from=adapter,
        rank=rank,
        alpha=alpha,
        description=description,
    )
    typer.echo(f"created expert {name!r} at {expert.path}")


@cli.command("index")
def index_command(
    expert: Annotated[str, typer.Option(help="Expert whose collection to build.")],
    corpus: Annotated[list[Path], typer.Option(help="BEIR corpus .jsonl or .jsonl.gz; repeat for several.")],
    factory: Annotated[str, typer.Option(help="FAISS storage: Flat (exact), HNSW32, IVF1024,PQ32 ...")] = "Flat",
    chunk_size: Annotated[int, typer.Option(min=1, help="Documents per checkpointed chunk.")] = 256,
    upsert: Annotated[
        bool, typer.Option(help="A repeated document id replaces the earlier one instead of failing.")
    ] = False,
    lexical: Annotated[bool, typer.Option(help="Build the BM25 index too (English stopwords, Snowball stems).")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    engine: Annotated[
        str, typer.Option(help="Where to embed: local (this process) or ray (Ray Data actors; pip install '.[ray]').")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (e.g. auto); unset: RAY_ADDRESS, else a local Ray.")
    ] = None,
    actors: Annotated[
        int | None, typer.Option(min=1, help="Encoder actors with --engine ray; unset: one per CPU (GPU).")
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option(min=0.01, help="CPUs (and torch threads) per encoder actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(min=0.0, help="GPUs per encoder actor (> 0 embeds on cuda).")] = 0.0,
    long_documents: Annotated[
        str | None,
        typer.Option(
            help="Documents over the encoder's limit: chunk (embed overlapping token windows; the default, but truncate with --engine ray), truncate, or error (skip and report them)."
        ),
    ] = None,
    chunk_overlap: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Tokens shared by consecutive windows of a chunked document (default 32, at most a quarter of a window).",
        ),
    ] = None,
) -> None:
    """Embed a corpus into a new index of an expert and publish it (resumes an interrupted run)."""
    from app.offline.building import index_expert
    from index import LONG_DOCUMENT_POLICIES, LexicalSettings

    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"Invalid engine {engine!r}. Valid engines are: local, ray", param_hint="--engine")
    if long_documents is not None and long_documents not in LONG_DOCUMENT_POLICIES:
        valid = ", ".join(LONG_DOCUMENT_POLICIES)
        raise typer.BadParameter(
            f"Invalid policy {long_documents!r}. Valid policies are: {valid}", param_hint="--long-documents"
        )
    if engine == "ray" and long_documents not in (None, "truncate"):
        raise typer.BadParameter(
            "--engine ray cannot chunk long documents yet: use --long-documents truncate", param_hint="--long-documents"
        )
    ray_indexing, started_ray = None, False
    if engine == "ray":
        from app.offline.ray_runtime import RayMissingError, ensure_ray

        try:
            started_ray = ensure_ray(ray_address)
        except RayMissingError as exc:
            raise typer.BadParameter(str(exc), param_hint="--engine") from exc
        from app.offline.ray_encoders import RayIndexing
        from index.build.ray_data import RayEngine

        ray_indexing = RayIndexing(
            state.settings, RayEngine(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)
        )
    try:
        manifest, report = index_expert(
            state.expert_dir(expert),
            state.encoder(),
            corpus,
            factory=factory,
            chunk_size=chunk_size,
            upsert=upsert,
            lexical=LexicalSettings() if lexical else None,
            progress=progress,
            ray=ray_indexing,
            long_documents=long_documents,
            chunk_overlap=chunk_overlap,
        )
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    typer.echo(
        f"indexed {report.documents} documents into {expert!r} ({report.directory.name}, version {manifest.version}) "
        f"in {report.seconds:.1f}s; {report.malformed} malformed lines skipped, {report.replaced} replaced"
    )
    for problem in report.problems[:10]:
        typer.echo(f"  skipped line {problem.line}: {problem.reason}", err=True)


@cli.command("pilots")
def pilots_command(
    expert: Annotated[str, typer.Option(help="Expert whose pilots to build.")],
    queries: Annotated[Path | None, typer.Option(help="BEIR queries.jsonl of the expert's training queries.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="Keep only queries judged here (e.g. qrels/train.tsv).")] = None,
    from_documents: Annotated[
        int | None, typer.Option(help="Use pseudo queries from N sampled indexed documents.")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="centroid, kmeans, or queries (a sample of the queries themselves, for RR_ROUTER_AGGREGATE=knn)."
        ),
    ] = "queries",
    clusters: Annotated[int, typer.Option(min=1, help="Pilots per expert with kmeans.")] = 4,
) -> None:
    """Build an expert's pilot embeddings (base encoder) from training queries or its own documents."""
    from app.offline.building import PilotMethod, build_pilots, pilot_texts_from_documents, pilot_texts_from_queries

    if (queries is None) == (from_documents is None):
        raise typer.BadParameter("give exactly one of --queries or --from-documents")
    directory = state.expert_dir(expert)
    if queries is not None:
        texts, source = pilot_texts_from_queries(queries, qrels), str(queries)
    else:
        assert from_documents is not None  # exactly one of the two, checked above
        texts, source = pilot_texts_from_documents(directory, sample=from_documents), "pseudo queries from documents"
    manifest = build_pilots(
        directory,
        state.encoder(),
        texts,
        method=cast(PilotMethod, method),  # a plain str option; build_pilots checks it
        clusters=clusters,
        source=source,
        query_max_length=state.settings.query_max_length,
    )
    assert manifest.pilots is not None  # just built
    typer.echo(
        f"built {manifest.pilots.count} pilot(s) for {expert!r} from {len(texts)} queries (version {manifest.version})"
    )


@cli.command("tune-fusion")
def tune_fusion_command(
    expert: Annotated[str, typer.Option(help="Expert whose hybrid fusion weight to tune.")],
    queries: Annotated[Path | None, typer.Option(help="BEIR queries.jsonl of held-out labelled queries.")] = None,
    qrels: Annotated[
        Path | None, typer.Option(help="Their judgements (e.g. a dev split the adapter never saw).")
    ] = None,
    pseudo: Annotated[
        bool, typer.Option(help="Tune on pseudo queries from the documents (measured to favour BM25).")
    ] = False,
    limit: Annotated[int, typer.Option(min=10, help="Tuning queries sampled.")] = 500,
) -> None:
    """Tune an expert's dense/BM25 fusion weight with its adapter's query vectors; the manifest keeps it."""
    from app.offline.fusion_tuning import from_collection, tune_fusion
    from index import Collection

    if pseudo == (queries is not None):
        raise typer.BadParameter("give either --queries with --qrels (labelled), or --pseudo")
    directory = state.expert_dir(expert)
    manifest = directory.read_manifest()
    if manifest.index is None:
        raise typer.BadParameter(f"expert {expert!r} has no index yet: run `rr index` first")
    try:
        with Collection.open(directory.path / manifest.index.directory) as collection:
            tuning = from_collection(collection, queries=queries, qrels=qrels, limit=limit)
        manifest = tune_fusion(
            directory,
            state.encoder(),
            tuning,
            candidates=state.settings.hybrid_candidates,
            max_length=state.settings.query_max_length,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    section = manifest.retrieval
    assert section is not None  # tune_fusion records it
    curve = "  ".join(f"{w}: {v:.3f}" for w, v in section.curve.items())
    typer.echo(f"{expert!r}: dense weight {section.weight} on {section.tuned_on} (version {manifest.version})\n{curve}")


@cli.command("route")
def route_command(
    query: Annotated[list[str], typer.Argument(help="One or more queries.")],
    top_k: TopK = None,
    fanout_margin: FanoutMargin = None,
    min_score: MinScore = None,
    merge: Merge = None,
    as_json: AsJson = False,
) -> None:
    """Show which expert each query is routed to, with every expert's score."""
    from app.engine.output import decision_dict

    engine = state.engine()
    decisions = engine.route(query, policy=_policy(top_k, fanout_margin, min_score, merge))
    if as_json:
        typer.echo(json.dumps([{"query": q, **decision_dict(d)} for q, d in zip(query, decisions)], indent=2))
        return
    for text, decision in zip(query, decisions):
        scores = ", ".join(f"{name} {score:.3f}" for name, score in decision.scores)
        typer.echo(
            f"{text!r} -> {', '.join(decision.experts)} [{decision.mode}, margin {decision.margin:.3f}] ({scores})"
        )


@cli.command("search")
def search_command(
    query: Annotated[list[str], typer.Argument(help="One or more queries (searched as one batch).")],
    k: Annotated[int, typer.Option("-k", "--k", help="Hits per query.")] = 10,
    expert: Annotated[str | None, typer.Option(help="Search this expert, bypassing the router.")] = None,
    top_k: TopK = None,
    fanout_margin: FanoutMargin = None,
    min_score: MinScore = None,
    merge: Merge = None,
    mode: Annotated[
        str | None, typer.Option(help="dense, lexical (BM25) or hybrid (both, fused); default RR_SEARCH_MODE.")
    ] = None,
    fusion: Annotated[str | None, typer.Option(help="Hybrid fusion: weighted or rrf.")] = None,
    hybrid_weight: Annotated[float | None, typer.Option(min=0, max=1, help="Dense share of a weighted fusion.")] = None,
    as_json: AsJson = False,
) -> None:
    """Routed search from the command line, without a server."""
    from app.engine.output import result_dict, result_text
    from app.engine.retrieval import requested_retrieval

    engine = state.engine()
    try:
        retrieval = requested_retrieval(mode=mode, fusion=fusion, weight=hybrid_weight)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    batch = engine.search(
        query, k=k, expert=expert, policy=_policy(top_k, fanout_margin, min_score, merge), retrieval=retrieval
    )
    if as_json:
        typer.echo(
            json.dumps({"results": [result_dict(r) for r in batch.results], "timings_ms": batch.timings_ms}, indent=2)
        )
        return
    for result in batch.results:
        typer.echo(result_text(result))


Host = Annotated[str | None, typer.Option(help="Address to listen on (env RR_HOST; default 127.0.0.1).")]
Port = Annotated[int | None, typer.Option(help="Port to listen on (env RR_PORT; default 8000; 0 = any free port).")]
LogLevel = Annotated[str, typer.Option(help="Server log level: debug, info, warning, error.")]


def _serve(
    host: str | None, port: int | None, log_level: str, encoder=None, after_start=None, building: Sequence[str] = ()
) -> None:
    from app.api.main import serve
    from app.offline.job_runner import job_runner_factory

    settings = state.settings.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    level = getattr(logging, log_level.upper(), logging.INFO)
    for name in ("app", "experts", "router", "index"):
        logging.getLogger(name).setLevel(level)
    typer.echo(
        f"serving the experts under {settings.data_dir} on http://{settings.host}:{settings.port} (API docs at /docs)"
    )
    serve(
        settings,
        encoder=encoder,
        log_level=log_level.lower(),
        after_start=after_start,
        building=building,
        jobs=job_runner_factory(settings),
    )


@cli.command("serve")
def serve_command(
    data: Annotated[
        Path | None, typer.Option("--data", help="Experts root (env RR_DATA_DIR); same as rr --data-dir.")
    ] = None,
    host: Host = None,
    port: Port = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the HTTP service: publishes what the registry lists (or, on a fresh root, every expert in it)."""
    if data is not None:
        state.settings = state.settings.model_copy(update={"data_dir": data})
    _serve(host, port, log_level)


@cli.command("demo")
def demo_command(
    collections: Annotated[
        str, typer.Option(help="Comma-separated collections from the datasets directory.")
    ] = "scifact,cranfield,cacm,cisi,npl",
    datasets: Annotated[Path | None, typer.Option(help="BEIR collections (env RR_DATASETS_DIR).")] = None,
    max_docs: Annotated[
        int | None, typer.Option(min=1, help="Index at most this many documents per collection.")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="After the report, serve the experts over HTTP.")
    ] = True,
    train: Annotated[
        bool,
        typer.Option(
            "--train/--no-train",
            help="Once every expert serves, train each one's adapter beside the service and swap it in live "
            "(a few minutes each on CPU); --no-train serves the untrained adapters only.",
        ),
    ] = True,
    host: Host = None,
    port: Port = None,
    log_level: LogLevel = "info",
) -> None:
    """Serve one expert per collection over HTTP at once, building the missing ones beside the service.

    Each expert is published the moment it is complete (searches never see half of one); /readyz and the
    console say what is still building. Then each untrained one is trained and its trained version swapped in
    live (unless --no-train); experts already trained are never trained again. With --no-serve: build them
    all, route every test query, then stop.
    """
    from app.offline.demo import publish_demo, run_demo

    names = [c.strip() for c in collections.split(",") if c.strip()]
    root = datasets or state.settings.datasets_dir
    if not serve:
        run_demo(state.settings, state.encoder(), root, names, max_docs=max_docs, echo=typer.echo)
        typer.echo(f'\nsearch it yourself: rr --data-dir {state.settings.data_dir} search "your question"')
        return
    from app.offline.demo import missing_experts
    from app.offline.demo_training import untrained_experts

    todo = missing_experts(state.settings, root, names)
    to_train = untrained_experts(state.settings, root, names) if train else []
    publish_demo(state.settings, [name for name in names if name not in todo])
    typer.echo(
        f"\ntry: curl -s localhost:{port or state.settings.port}/search -H 'Content-Type: application/json' "
        '-d \'{"query": "lift of a swept wing at supersonic speed", "k": 3}\''
    )
    if todo:
        typer.echo(f"building {', '.join(todo)} beside the service: each serves as soon as it is complete")
    if to_train:
        typer.echo(f"then training {', '.join(to_train)}: each trained version is swapped in live when done")
    _serve(
        host,
        port,
        log_level,
        encoder=state.encoder(),
        after_start=partial(_demo_beside_service, root=root, names=names, todo=todo, train=to_train, max_docs=max_docs),
        building=todo,
    )


def _demo_beside_service(
    service, *, root: Path, names: list[str], todo: list[str], train: list[str], max_docs: int | None
) -> None:
    """``rr demo``'s work once the service serves: build and publish what is missing, then train what is
    untrained, each trained version swapped in live by the publisher's replace; then what routing buys.

    Reports: once every expert serves, the routing report (where each collection's queries go, with an
    example), and when nothing is left to train, the quality report (nDCG@10 of routed search against BM25
    and one union hybrid index, :func:`~app.offline.demo.report_quality`), on the experts then serving.
    """
    from app.offline.demo import build_beside_service, report_quality, report_routing

    runtime = service.runtime
    publisher = runtime.publisher
    judged = all((root / name / "qrels" / "test.tsv").is_file() for name in names)

    def publish(name: str) -> None:
        publisher.add_path(name, replace=name in publisher.entries)

    def swap_in(directory: Path) -> None:
        publisher.add_path(str(directory), replace=True)

    def report() -> None:  # every expert serves; training (minutes per expert) may go on
        if service.closing or not judged:
            return
        report_routing(runtime.engine, root, names, echo=typer.echo)
        if train:
            typer.echo("the quality report follows once training is done")

    build_beside_service(
        state.settings,
        state.encoder(),
        root,
        todo,
        max_docs=max_docs,
        publish=publish,
        progress=service.set_building,
        stopping=lambda: service.closing,
        echo=typer.echo,
        built=report,
        train=train,
        swap_in=swap_in,
    )
    if judged and not service.closing:
        if max_docs is not None:
            typer.echo(
                f"\n(--max-docs {max_docs}: relevant documents beyond it are missing, so every system scores lower)"
            )
        report_quality(
            runtime.engine, root, [name for name in names if name in runtime.engine.experts], echo=typer.echo
        )


def _register_optional_commands() -> None:
    """Commands that live in their own modules (one job each), registered on the one entry point."""
    from app.cli.documents import documents_cli
    from app.cli.evaluation import eval_command, pilots_paper_command
    from app.cli.experts import experts_cli
    from app.cli.keys import keys_cli
    from app.cli.train import add_domain_command, train_expert_command

    cli.command("train-expert")(train_expert_command)
    cli.command("add-domain")(add_domain_command)
    cli.command("eval")(eval_command)
    cli.command("pilots-paper")(pilots_paper_command)
    cli.add_typer(documents_cli)
    cli.add_typer(experts_cli)
    cli.add_typer(keys_cli)


_register_optional_commands()


def main() -> None:
    """Console entry point: domain errors print one line and exit 2, without a traceback (as usage errors do)."""
    from app.errors import ServiceError
    from experts import ExpertError
    from index import IndexStoreError
    from router import RouterError

    try:
        cli()  # standalone: click prints usage errors itself and exits 2
    except (ExpertError, IndexStoreError, RouterError, ServiceError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
