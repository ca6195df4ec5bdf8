"""Writing an :class:`~app.offline.evaluation.EvalReport` as Markdown tables plus a PNG bar chart.

The files are written into a temporary sibling folder that is renamed into
place at the end, so an error never leaves a half-written report behind.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app.offline.evaluation import AVERAGE_KINDS, SYSTEM_TITLES, AverageKind, EvalReport, accuracy_of

REPORT_FILE = "report.md"
CHART_FILE = "metrics.png"
DATA_FILE = "report.json"
EVAL_FILE = "eval.json"  # the figures in a stable shape, for comparing runs
METRICS = ("nDCG@10", "R@100")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(report: EvalReport, *, command: str = "") -> str:
    """The report as Markdown: metrics per system, the confusion matrix, the pilot comparison."""
    cols = report.collections
    lines = ["# Evaluation", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    queries = ", ".join(f"{c} {report.queries[c]}" for c in cols)
    lines += [
        f"Judged test queries: {queries} ({sum(report.queries.values())} in all). "
        f"Union index: {report.union_documents} documents. Took {report.seconds:.0f} s.",
        "",
        "macro: mean over collections; micro: mean over every judged query (collections weighted by their queries).",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric}", ""]
        rows = [
            [system, SYSTEM_TITLES[system]]
            + [f"{report.metrics[system][c][metric]:.3f}" for c in cols]
            + [f"{report.average(system, metric, kind):.3f}" for kind in AVERAGE_KINDS]
            for system in report.systems
        ]
        lines += _table(["system", "what", *cols, *AVERAGE_KINDS], rows) + [""]
    accuracy = report.routing_accuracy
    aggregate = f" (aggregate {report.routed_aggregate})" if report.routed_aggregate else ""
    lines += [f"## Routing of the deployed pilots{aggregate}", "", "Rows: true collection; columns: routed expert.", ""]
    routed_to = _routed_columns(report.confusion, cols)
    shown = report.confusion[:, : len(routed_to)]
    rows = [[c] + [str(int(v)) for v in shown[i]] + [f"{accuracy[c]:.1%}"] for i, c in enumerate(cols)]
    rows.append(["all"] + [str(int(v)) for v in shown.sum(axis=0)] + [f"{accuracy['all']:.1%}"])
    lines += _table(["true \\ routed", *routed_to, "accuracy"], rows) + [""]
    if report.pilot_comparison or report.pilot_notes:
        lines += ["## Pilot constructions (routing accuracy on the test queries)", ""]
        rows = [
            [construction, aggregate] + [f"{acc[c]:.1%}" for c in cols] + [f"{acc['all']:.1%}"]
            for construction, by_aggregate in report.pilot_comparison.items()
            for aggregate, acc in by_aggregate.items()
        ]
        lines += _table(["pilots", "aggregate", *cols, "all"], rows) + [""]
        lines += [f"- {key}: {note}" for key, note in report.pilot_notes.items()] + [""]
    return "\n".join(lines)


def render_chart(report: EvalReport, path: Path) -> None:
    """Grouped bars: per collection and the macro and micro averages, one bar per system; one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*report.collections, *AVERAGE_KINDS]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(6 + 1.4 * len(groups), 4.5), squeeze=False)
    systems = report.systems
    width = 0.8 / len(systems)
    # Matplotlib's default cycle has 10 colours: more systems than that would share one.
    palette = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20")
    for axis, metric in zip(axes[0], METRICS):
        for i, system in enumerate(systems):
            values = [report.metrics[system][c][metric] for c in report.collections]
            values += [report.average(system, metric, kind) for kind in AVERAGE_KINDS]
            offset = (i - (len(systems) - 1) / 2) * width
            axis.bar(np.arange(len(groups)) + offset, values, width, label=system, color=palette(i % palette.N))
        axis.set_xticks(np.arange(len(groups)), groups, rotation=30)
        axis.set_ylim(0, 1)
        axis.set_title(metric)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _averages(report: EvalReport, kind: AverageKind, names: dict[str, str]) -> dict[str, dict[str, float]]:
    """``{system: {metric name: average}}`` of one kind, the metrics named as ``names`` says."""
    return {s: {names[m]: report.average(s, m, kind) for m in METRICS} for s in report.systems}


def report_data(report: EvalReport) -> dict[str, object]:
    """The figures as plain JSON-ready data; ``average`` is the macro one (older readers), as ``macro_average``."""
    same = {m: m for m in METRICS}
    return {
        "collections": report.collections,
        "queries": report.queries,
        "metrics": report.metrics,
        "average": _averages(report, "macro", same),
        "macro_average": _averages(report, "macro", same),
        "micro_average": _averages(report, "micro", same),
        "confusion": report.confusion.tolist(),
        "routing_accuracy": report.routing_accuracy,
        "routed_aggregate": report.routed_aggregate,
        "pilot_comparison": report.pilot_comparison,
        "pilot_notes": report.pilot_notes,
        "union_documents": report.union_documents,
        "seconds": report.seconds,
        "settings": report.settings,
    }


#: The confusion matrix's last column: queries routed to an expert that is not one of the collections scored.
OTHER_EXPERTS = "(other experts)"


def _routed_columns(confusion: np.ndarray, collections: list[str]) -> list[str]:
    """The routed-expert columns to show: the collections, and the other experts' column when any query went there."""
    if confusion.shape[1] > len(collections) and confusion[:, len(collections) :].sum():
        return [*collections, OTHER_EXPERTS]
    return list(collections)


def _confusion_dict(confusion: np.ndarray, collections: list[str]) -> dict[str, dict[str, int]]:
    routed_to = _routed_columns(confusion, collections)
    return {
        true: {routed: int(confusion[i, j]) for j, routed in enumerate(routed_to)} for i, true in enumerate(collections)
    }


def eval_data(report: EvalReport, command: str = "") -> dict[str, object]:
    """The figures in a stable shape for comparing runs: per collection and system, and per routing rule.

    ``{"collections": {name: {system: {"ndcg@10", "recall@100"}}}, "queries": {name: n},
    "average": {system: ...}, "macro_average": {system: ...}, "micro_average": {system: ...},
    "routing": {rule: {"accuracy", "per_collection", "confusion": {true: {routed: n}}}}, "command", "seconds"}``

    ``average`` is the macro average, kept under its old name for the readers
    of earlier runs; ``macro_average`` is the same figures under an explicit name.
    """
    keys = {"nDCG@10": "ndcg@10", "R@100": "recall@100"}
    cols = report.collections
    routing: dict[str, object] = {}
    rules = [(f"deployed ({report.routed_aggregate or 'router'})", report.confusion)] + [
        (f"{construction} + {aggregate}", confusion)
        for construction, by_aggregate in report.pilot_confusion.items()
        for aggregate, confusion in by_aggregate.items()
    ]
    for rule, confusion in rules:
        accuracy = accuracy_of(confusion, cols)
        routing[rule] = {
            "accuracy": accuracy["all"],
            "per_collection": {c: accuracy[c] for c in cols},
            "confusion": _confusion_dict(confusion, cols),
        }
    return {
        "collections": {
            c: {s: {keys[m]: report.metrics[s][c][m] for m in METRICS} for s in report.systems} for c in cols
        },
        "queries": dict(report.queries),
        "average": _averages(report, "macro", keys),
        "macro_average": _averages(report, "macro", keys),
        "micro_average": _averages(report, "micro", keys),
        "routing": routing,
        "command": command,
        "seconds": report.seconds,
    }


def write_report(report: EvalReport, reports_dir: Path, *, name: str | None = None, command: str = "") -> Path:
    """Write ``report.md``, ``metrics.png``, ``report.json`` and ``eval.json`` into ``reports_dir/<name>`` (default: a UTC timestamp)."""
    name = name or datetime.now(UTC).strftime("eval-%Y%m%dT%H%M%SZ")
    target = Path(reports_dir) / name
    if target.exists():
        raise FileExistsError(f"report folder {target} already exists; give another name")
    staging = Path(reports_dir) / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / REPORT_FILE).write_text(render_markdown(report, command=command), encoding="utf-8")
        render_chart(report, staging / CHART_FILE)
        (staging / DATA_FILE).write_text(json.dumps(report_data(report), indent=2) + "\n", encoding="utf-8")
        (staging / EVAL_FILE).write_text(json.dumps(eval_data(report, command), indent=2) + "\n", encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
