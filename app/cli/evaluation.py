"""``rr eval`` and ``rr pilots-paper``: command functions ready to register on the ``rr`` Typer app.

Register with::

    cli.command("eval")(eval_command)
    cli.command("pilots-paper")(pilots_paper_command)

Each parses its options and calls one library function
(:func:`app.offline.evaluation.evaluate` then :func:`app.offline.report.write_report`;
:func:`app.offline.pilot_selection.select_paper_pilots` then ``publish_pilots``).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_COLLECTIONS = "scifact,cranfield,cacm,cisi,npl"


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise typer.BadParameter(f"give at least one name, comma-separated; got {text!r}")
    return names


def eval_command(
    datasets: Annotated[
        Path | None, typer.Option(help="Folder of BEIR collections, one per expert name (env RR_DATASETS_DIR).")
    ] = None,
    collections: Annotated[
        str, typer.Option(help="Comma-separated collections (= expert names).")
    ] = DEFAULT_COLLECTIONS,
    out: Annotated[Path, typer.Option(help="Reports folder; each run writes a new sub-folder.")] = Path("reports"),
    name: Annotated[str | None, typer.Option(help="Sub-folder name (default: a UTC timestamp).")] = None,
    pilot_method: Annotated[
        str,
        typer.Option(
            help="Pilot constructions to compare, comma-separated: centroid, kmeans, queries, paper; or 'none'."
        ),
    ] = "centroid,kmeans,queries,paper",
    pseudo_sample: Annotated[int, typer.Option(min=1, help="Pseudo queries per collection without train qrels.")] = 300,
    clusters: Annotated[int, typer.Option(min=1, help="k-means pilots per expert.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the pseudo-query sample.")] = 0,
    fanout_margin: Annotated[
        float | None, typer.Option(min=0, help="Also score routing that fans out to the top 2 below this margin.")
    ] = None,
) -> None:
    """Score base, union, oracle-expert and routed search on the test qrels; compare pilot constructions."""
    from app.cli.commands import state
    from app.offline.evaluation import AVERAGE_KINDS, evaluate
    from app.offline.pilot_selection import PILOT_CONSTRUCTIONS
    from app.offline.report import write_report

    methods = [] if pilot_method.strip() == "none" else _names(pilot_method)
    unknown = [m for m in methods if m not in PILOT_CONSTRUCTIONS]
    if unknown:
        raise typer.BadParameter(
            f"unknown pilot methods {unknown}. Valid methods are: {', '.join(PILOT_CONSTRUCTIONS)}, none"
        )
    engine = state.engine()
    try:
        report = evaluate(
            engine,
            datasets or state.settings.datasets_dir,
            _names(collections),
            constructions=methods,  # type: ignore[arg-type]
            pseudo_sample=pseudo_sample,
            clusters=clusters,
            seed=seed,
            routed_aggregate=state.settings.router_aggregate,
            fanout_margin=fanout_margin,
        )
    finally:
        engine.close()
    folder = write_report(report, out, name=name, command=shlex.join(["rr", *sys.argv[1:]]))
    accuracy = report.routing_accuracy
    typer.echo(f"wrote {folder} ({report.seconds:.0f}s)")
    for system in report.systems:
        figures = "  ".join(
            f"{metric} " + " ".join(f"{kind} {report.average(system, metric, kind):.3f}" for kind in AVERAGE_KINDS)
            for metric in ("nDCG@10", "R@100")
        )
        typer.echo(f"  {system:<13} {figures}")
    typer.echo(f"  routing accuracy {accuracy['all']:.1%}")


def pilots_paper_command(
    datasets: Annotated[
        Path | None,
        typer.Option(
            help="BEIR collections: an expert's qrels/train.tsv gives its training queries (env RR_DATASETS_DIR)."
        ),
    ] = None,
    experts: Annotated[str | None, typer.Option(help="Comma-separated experts (default: every loaded one).")] = None,
    pseudo_sample: Annotated[int, typer.Option(min=1, help="Pseudo queries per expert without train qrels.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the pseudo-query sample.")] = 0,
    dry_run: Annotated[bool, typer.Option(help="Show who wins what; publish nothing.")] = False,
) -> None:
    """Build RouterRetriever's pilots (best expert per training query) for the experts and publish them."""
    from app.cli.commands import state
    from app.offline.pilot_selection import publish_pilots, select_paper_pilots

    engine = state.engine()
    try:
        selection = select_paper_pilots(
            engine,
            datasets or state.settings.datasets_dir,
            experts=_names(experts) if experts else None,
            pseudo_sample=pseudo_sample,
            seed=seed,
        )
        for source, wins in selection.wins.items():
            shown = ", ".join(f"{n} {w}" for n, w in wins.items() if w)
            origin = selection.queries[source].origin
            typer.echo(f"  {source} ({origin}): won by {shown or 'nobody'}; {selection.dropped[source]} ties dropped")
        if not selection.pilots:
            typer.echo("error: every expert tied on every training query (untrained adapters?): no pilots", err=True)
            raise typer.Exit(2)
        if selection.without_pilots:
            typer.echo(f"warning: {selection.without_pilots} won no query and keep their previous pilots", err=True)
        if dry_run:
            return
        published = publish_pilots(engine, selection.pilots, method="paper", source=selection.source)
    finally:
        engine.close()
    for name, manifest in published.items():
        assert manifest.pilots is not None  # just published
        typer.echo(f"published {manifest.pilots.count} paper pilot(s) for {name!r} (version {manifest.version})")
