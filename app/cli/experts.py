"""``rr experts [versions NAME | rollback NAME [--version N]]``: the experts under the data root, and their versions.

Registered on ``rr`` as a group whose bare form lists the experts (as ``rr
experts`` always did). ``versions`` and ``rollback`` read and change
``registry.json`` directly (:mod:`app.publishing.at_rest`), for a data root no
service runs on; a rollback is refused while one does, and says to use
``POST /admin/experts/{name}/rollback`` instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

experts_cli = typer.Typer(name="experts", help="List the experts under the data root; show and roll back versions.")

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Name = Annotated[str, typer.Argument(help="A published expert.")]


@experts_cli.callback(invoke_without_command=True)
def experts_command(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the experts under the experts root, with what each has."""
    if ctx.invoked_subcommand is not None:
        return
    from app.cli.commands import state
    from experts import list_expert_dirs

    rows = []
    for directory in list_expert_dirs(state.settings.data_dir):
        try:
            manifest = directory.read_manifest()
            rows.append(
                {
                    "name": manifest.name,
                    "version": manifest.version,
                    "documents": manifest.index.count if manifest.index else None,
                    "index": manifest.index.factory if manifest.index else None,
                    "pilots": manifest.pilots.count if manifest.pilots else None,
                    "adapter": "trained" if manifest.adapter.trained else "untrained",
                    "side": manifest.adapter.side,
                }
            )
        except Exception as exc:  # a listing shows broken experts rather than hiding them
            rows.append({"name": directory.path.name, "error": str(exc)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no experts under {state.settings.data_dir}")
    for row in rows:
        typer.echo("  ".join(f"{key}={value}" for key, value in row.items()))


@experts_cli.command("versions")
def versions_command(name: Name, as_json: AsJson = False) -> None:
    """The serving version of a published expert, then those kept for a rollback (RR_KEEP_VERSIONS)."""
    from app.cli.commands import state
    from app.publishing.at_rest import list_versions

    rows = [asdict(row) for row in list_versions(state.settings.data_dir, name)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row.pop("serving") else " "
        gate = row.pop("gate")
        typer.echo(f"{mark} " + "  ".join(f"{key}={value}" for key, value in row.items() if value is not None))
        if gate is not None:
            typer.echo(f"    gate: {gate_summary(gate)}")


def gate_summary(gate: dict[str, Any]) -> str:
    """A replace's quality gate on one line: the verdict, the set, both versions' figures, the margin."""
    candidate, serving = gate["candidate"], gate["serving"]
    figures = f"nDCG@10 {candidate['ndcg_at_10']:.4f}, Recall@100 {candidate['recall_at_100']:.4f}"
    if serving is not None:
        figures += (
            f" against v{serving['version']}'s nDCG@10 {serving['ndcg_at_10']:.4f}, "
            f"Recall@100 {serving['recall_at_100']:.4f}"
        )
    verdict = "passed" if gate["passed"] else "refused"
    return f"{verdict} on {gate['set']} ({gate['queries']} queries, {gate['mode']}): {figures}; margin {gate['margin']}"


@experts_cli.command("rollback")
def rollback_command(
    name: Name,
    version: Annotated[
        int | None, typer.Option(min=0, help="Manifest version to serve again (default: the one served before).")
    ] = None,
) -> None:
    """Publish a kept version again in registry.json (no service may run on the data root; the next start serves it)."""
    from app.cli.commands import state
    from app.publishing.at_rest import rollback_at_rest

    settings = state.settings
    entry = rollback_at_rest(settings.data_dir, name, version=version, keep_versions=settings.keep_versions)
    typer.echo(f"expert {name!r} now publishes version {entry.version} from {entry.path}")
