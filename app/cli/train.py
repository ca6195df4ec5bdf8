"""``rr train-expert`` and ``rr add-domain``: the command functions, ready to register on the ``rr`` Typer app.

Kept out of ``app/cli/commands.py`` so the training options live beside nothing else;
register them with ``cli.command("train-expert")(train_expert_command)``. Like
every subcommand each parses options and calls one library function,
:func:`app.offline.expert_training.train_expert` and
:func:`app.offline.domains.add_domain` (the same training, then a publish).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.offline.expert_training import TrainingResult
    from app.publishing.registry import GateRecord
    from app.settings import Settings

    GateCheck = Callable[[Path | None, Path], GateRecord]

_DEFAULTS: dict[str, Any] = {  # Any: each parameter below states its value's type
    "steps": 300,
    "batch_size": 64,
    "lr": 1e-3,
    "temperature": 0.05,
    "rank": 8,
    "alpha": 32.0,
    "dropout": 0.1,
    "targets": "query,key,value,dense",
    "seed": 0,
    "query_max_length": 48,
    "full_softmax_limit": 50_000,
    "top_layers": 2,
}


# The options `rr train-expert` and `rr add-domain` share.
Name = Annotated[str, typer.Argument(help="Expert name: a-z, 0-9, '-', '_'.")]
Corpus = Annotated[list[Path], typer.Option(help="BEIR corpus .jsonl or .jsonl.gz; repeat for several.")]
Queries = Annotated[Path | None, typer.Option(help="Labelled training queries (BEIR queries.jsonl).")]
Qrels = Annotated[Path | None, typer.Option(help="Their judgements, e.g. qrels/train.tsv (never the test split).")]


def train_expert_command(
    name: Name,
    corpus: Corpus,
    queries: Queries = None,
    qrels: Qrels = None,
    replace: Annotated[
        bool, typer.Option(help="Retrain an existing expert; it serves until the new one is complete.")
    ] = False,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = _DEFAULTS["steps"],
    batch_size: Annotated[int, typer.Option(min=1, help="Queries per step.")] = _DEFAULTS["batch_size"],
    lr: Annotated[float, typer.Option(min=0, help="AdamW peak learning rate (linear warm-up and decay).")] = _DEFAULTS[
        "lr"
    ],
    temperature: Annotated[float, typer.Option(min=0, help="InfoNCE softmax temperature.")] = _DEFAULTS["temperature"],
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = _DEFAULTS["rank"],
    alpha: Annotated[float, typer.Option(min=0, help="LoRA alpha (the update is scaled by alpha / rank).")] = _DEFAULTS[
        "alpha"
    ],
    dropout: Annotated[float, typer.Option(min=0, max=0.99, help="LoRA dropout.")] = _DEFAULTS["dropout"],
    targets: Annotated[str, typer.Option(help="Comma-separated module names that get LoRA.")] = _DEFAULTS["targets"],
    hard_negatives: Annotated[
        int | None, typer.Option(min=1, help="Mined hard negatives per query (collections above --full-softmax-limit).")
    ] = None,
    top_layers: Annotated[
        int,
        typer.Option(
            min=0,
            help="LoRA on the encoder's top N layers only: a routed query's expert pass then runs only those "
            "(0: every layer).",
        ),
    ] = _DEFAULTS["top_layers"],
    full_softmax_limit: Annotated[
        int, typer.Option(min=0, help="Up to this many documents, score each query against all of them.")
    ] = _DEFAULTS["full_softmax_limit"],
    query_max_length: Annotated[int, typer.Option(min=2, help="Token limit of training queries.")] = _DEFAULTS[
        "query_max_length"
    ],
    seed: Annotated[
        int, typer.Option(help="Seed of pairs, batches and LoRA init (same seed, same adapter on CPU).")
    ] = _DEFAULTS["seed"],
    factory: Annotated[
        str, typer.Option(help="FAISS storage of the expert's index: Flat (exact), HNSW32, ...")
    ] = "Flat",
    description: Annotated[str, typer.Option(help="Free text shown in listings.")] = "",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    gate: Annotated[
        str | None,
        typer.Option(
            help="With --replace: score the new version against the serving one first (nDCG@10, Recall@100) and "
            "keep the serving one if the new is worse by more than --gate-margin: 'pseudo' or QUERIES:QRELS "
            "(files under the data root).",
            show_default=False,
        ),
    ] = None,
    gate_margin: Annotated[
        float | None,
        typer.Option(min=0, max=1, help="The gate's margin (default: RR_GATE_MARGIN).", show_default=False),
    ] = None,
) -> None:
    """Train a LoRA expert on a corpus (plus labelled queries if given) and publish it with index and pilots."""
    from app.cli.commands import state
    from app.cli.experts import gate_summary
    from app.errors import ServiceError
    from app.offline.expert_training import train_expert
    from experts import TrainConfig

    if (queries is None) != (qrels is None):
        raise typer.BadParameter("give both --queries and --qrels, or neither (corpus-only training)")
    settings = state.settings
    try:
        check = _gate_check(settings, gate, gate_margin, replace=replace)
    except ServiceError as exc:
        raise typer.BadParameter(exc.message, param_hint="--gate") from exc
    try:
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            temperature=temperature,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=tuple(t.strip() for t in targets.split(",") if t.strip()),
            query_max_length=query_max_length,
            seed=seed,
            hard_negatives=hard_negatives,
            top_layers=top_layers or None,
            full_softmax_limit=full_softmax_limit,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    result = train_expert(
        state.settings.data_dir,
        name,
        encoder=state.encoder(),
        corpora=corpus,
        queries=queries,
        qrels=qrels,
        config=config,
        replace=replace,
        factory=factory,
        description=description,
        keep_versions=state.settings.keep_versions,
        progress=progress,
        gate=check,
    )
    _echo_training(result)
    if result.gate is not None:
        typer.echo(f"  gate: {gate_summary(result.gate.model_dump(mode='json'))}")


def _gate_check(settings: Settings, gate: str | None, margin: float | None, *, replace: bool) -> GateCheck | None:
    """The gate ``train_expert`` runs before its swap, scoring like the service would; None without --gate."""
    from app.publishing.gate import gate_directories, gate_spec

    spec = gate_spec(gate, settings.data_dir, margin=margin, default_margin=settings.gate_margin, replace=replace)
    if spec is None:
        return None
    from app.cli.commands import state

    def check(serving: Path | None, candidate: Path) -> GateRecord:
        config = settings.engine_config()
        return gate_directories(
            state.encoder(),
            spec,
            serving,
            candidate,
            retrieval=config.retrieval,
            max_length=config.query_max_length,
            limit=settings.gate_queries,
        )

    return check


def _echo_training(result: TrainingResult) -> None:
    report, manifest = result.train, result.manifest
    assert manifest.index is not None and manifest.pilots is not None  # train_expert builds both
    kinds = ", ".join(f"{count} {kind}" for kind, count in result.pair_kinds.items())
    index = "reused" if result.index_reused else f"built in {result.index_seconds:.0f}s"
    replaced = f", replacing version {result.replaced_version}" if result.replaced_version is not None else ""
    typer.echo(
        f"trained expert {result.name!r} (version {manifest.version}{replaced}) at {result.path}\n"
        f"  {manifest.index.count} documents (index {index}); {report.pairs} training queries ({kinds})\n"
        f"  {report.config.steps} steps, {report.mode.replace('_', ' ')}: loss {report.first_loss:.3f} -> "
        f"{report.final_loss:.3f} in {report.seconds:.0f}s; {manifest.pilots.count} pilot(s); "
        f"{result.seconds:.0f}s in all"
    )


def add_domain_command(
    name: Name,
    corpus: Corpus,
    queries: Queries = None,
    qrels: Qrels = None,
    url: Annotated[
        str | None, typer.Option(help="A running service (http://host:port): publish the expert to it.")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="Admin key for --url (default: RR_ADMIN_KEY).", show_default=False)
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Rebuild an existing expert; the current one serves until the new one is swapped in.")
    ] = False,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = _DEFAULTS["steps"],
    batch_size: Annotated[int, typer.Option(min=1, help="Queries per step.")] = _DEFAULTS["batch_size"],
    description: Annotated[str, typer.Option(help="Free text shown in listings.")] = "",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    on_server: Annotated[
        bool,
        typer.Option(
            "--on-server",
            help="With --url: build on the service as a job, from --corpus/--queries/--qrels paths under ITS data "
            "root (nothing is built here; nothing is uploaded without --upload).",
        ),
    ] = False,
    upload: Annotated[
        bool,
        typer.Option(
            "--upload",
            help="With --on-server: send the local --corpus/--queries/--qrels files to the service first "
            "(POST /admin/uploads), for a service whose disk this machine cannot reach.",
        ),
    ] = False,
) -> None:
    """Add a domain in one step: create, index, pilots, train (labelled queries if given) and publish.

    Without --url the expert joins this data root's registry (a later `rr serve` serves it); with --url it
    is uploaded to that running service, wherever it keeps its data; with --url and --on-server the service
    builds it itself (`POST /admin/jobs`) from files on its data root, or from local files it sends first
    with --upload. For every training option, see `rr train-expert`.
    """
    from app.cli.commands import state
    from app.offline.domains import add_domain
    from app.offline.service_client import RemoteError
    from experts import TrainConfig

    settings_key = state.settings.admin_key
    key = admin_key or (settings_key.get_secret_value() if settings_key is not None else None)
    if upload and not on_server:
        raise typer.BadParameter("--upload sends the files for a build on the service: give --on-server (and --url)")
    if on_server:
        _add_domain_on_server(
            name,
            corpus,
            queries,
            qrels,
            url=url,
            admin_key=key,
            replace=replace,
            steps=steps,
            batch_size=batch_size,
            upload=upload,
        )
        return
    try:
        result = add_domain(
            state.settings.data_dir,
            name,
            encoder=state.encoder,
            corpora=corpus,
            queries=queries,
            qrels=qrels,
            config=TrainConfig(steps=steps, batch_size=batch_size),
            replace=replace,
            url=url,
            admin_key=key,
            description=description,
            progress=progress,
            echo=typer.echo,
        )
    except RemoteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _echo_training(result.training)
    if result.published is not None and url is not None:
        served = result.published
        typer.echo(
            f"published to {url}: {served['name']!r} {served['state']}, version {served.get('version')}, "
            f"{served.get('documents')} documents, at {served['path']} on the server\n"
            f"try: curl -s {url.rstrip('/')}/search -H 'Content-Type: application/json' "
            f'-d \'{{"query": "...", "expert": "{name}"}}\''
        )
    elif result.registered:
        typer.echo(f"published in {state.settings.data_dir}/registry.json: `rr serve` serves it from its next start")
    else:
        typer.echo(
            f"no registry under {state.settings.data_dir} yet: `rr serve` serves every expert there, this one too"
        )


def _add_domain_on_server(
    name: str,
    corpus: list[Path],
    queries: Path | None,
    qrels: Path | None,
    *,
    url: str | None,
    admin_key: str | None,
    replace: bool,
    steps: int,
    batch_size: int,
    upload: bool = False,
) -> None:
    """``rr add-domain --url --on-server [--upload]``: a train job on the service, followed until it ends."""
    from app.offline.remote_jobs import run_remote_train_job, upload_file
    from app.offline.service_client import RemoteError

    if url is None:
        raise typer.BadParameter("--on-server builds on a running service: give its --url too")
    if len(corpus) != 1:
        where = "a local file to upload" if upload else "a file under the service's data root"
        raise typer.BadParameter(f"--on-server takes one --corpus ({where}), got {len(corpus)}")
    files = {"corpus": corpus[0], "queries": queries, "qrels": qrels}
    try:
        paths: dict[str, str | None] = {}
        for role, local in files.items():
            if local is None or not upload:
                paths[role] = None if local is None else local.as_posix()
                continue
            if not local.is_file():
                raise typer.BadParameter(f"--{role} {local} is not a file here, so it cannot be uploaded")
            sent = upload_file(url, local, admin_key=admin_key)
            typer.echo(f"uploaded {local} ({sent['bytes']} bytes, sha256 {sent['sha256'][:12]}...) as {sent['path']}")
            paths[role] = sent["path"]
        corpus_path = paths["corpus"]
        assert corpus_path is not None  # one --corpus, checked above
        job = run_remote_train_job(
            url,
            name,
            corpus=corpus_path,
            queries=paths["queries"],
            qrels=paths["qrels"],
            steps=steps,
            batch_size=batch_size,
            replace=replace,
            admin_key=admin_key,
            echo=typer.echo,
        )
    except RemoteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"published to {url} by job {job['id']}: {name!r} version {job['published_version']}\n"
        f"try: curl -s {url.rstrip('/')}/search -H 'Content-Type: application/json' "
        f'-d \'{{"query": "...", "expert": "{name}"}}\''
    )
