"""``rr train-expert``: the command function, ready to register on the ``rr`` Typer app.

Kept out of ``app/cli/commands.py`` so the training options live beside nothing else;
register it with ``cli.command("train-expert")(train_expert_command)``. Like
every subcommand it parses options and calls one library function,
:func:`app.offline.expert_training.train_expert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
}


def train_expert_command(
    name: Annotated[str, typer.Argument(help="Expert name: a-z, 0-9, '-', '_'.")],
    corpus: Annotated[list[Path], typer.Option(help="BEIR corpus .jsonl or .jsonl.gz; repeat for several.")],
    queries: Annotated[Path | None, typer.Option(help="Labelled training queries (BEIR queries.jsonl).")] = None,
    qrels: Annotated[
        Path | None, typer.Option(help="Their judgements, e.g. qrels/train.tsv (never the test split).")
    ] = None,
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
) -> None:
    """Train a LoRA expert on a corpus (plus labelled queries if given) and publish it with index and pilots."""
    from app.cli.commands import state
    from app.offline.expert_training import train_expert
    from experts import TrainConfig

    if (queries is None) != (qrels is None):
        raise typer.BadParameter("give both --queries and --qrels, or neither (corpus-only training)")
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
    )
    report, manifest = result.train, result.manifest
    assert manifest.index is not None and manifest.pilots is not None  # train_expert builds both
    kinds = ", ".join(f"{count} {kind}" for kind, count in result.pair_kinds.items())
    index = "reused" if result.index_reused else f"built in {result.index_seconds:.0f}s"
    replaced = f", replacing version {result.replaced_version}" if result.replaced_version is not None else ""
    typer.echo(
        f"trained expert {name!r} (version {manifest.version}{replaced}) at {result.path}\n"
        f"  {manifest.index.count} documents (index {index}); {report.pairs} training queries ({kinds})\n"
        f"  {report.config.steps} steps, {report.mode.replace('_', ' ')}: loss {report.first_loss:.3f} -> "
        f"{report.final_loss:.3f} in {report.seconds:.0f}s; {manifest.pilots.count} pilot(s); "
        f"{result.seconds:.0f}s in all"
    )
