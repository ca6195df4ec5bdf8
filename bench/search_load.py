"""Search under load: ``POST /search`` with 1, 8 and 32 concurrent clients, against two baselines timed in the same run.

Run by hand (not in CI), about 5 minutes with the defaults::

    nice -n 5 python bench/search_load.py --root /tmp/trained --json search_load.json
    python bench/search_load.py --duration 5 --rounds 1 --levels 1,8     # a quick look
    python bench/search_load.py --root /tmp/trained --profile profiles/  # + py-spy stacks of the routed server
    python bench/search_load.py --root /tmp/trained --torch-threads 1    # every process on one torch thread
    python bench/search_load.py --root /tmp/trained --service-env RR_SEARCH_MODE=dense \\
        --service-env RR_ROUTER_EVIDENCE=none                            # the same work as the baseline

Queries: every judged test query of the five shared collections (746),
shuffled so the collections mix; each request is one query, ``k`` = 10.

Experts: ``--root`` is copied file by file (what each manifest lists) into a
temporary root and served from there, so the source is only read (``rr serve``
writes a registry file into the root it serves). Without ``--root``, five
stand-in experts are built: the first ``--docs`` documents of each collection
embedded by the base encoder, random LoRA adapters marked trained (so the
adapter pass runs, see bench/synthetic_experts.py) and centroid pilots of
pseudo queries.

Measured, in this order:

1. **references**, in this process, with the service's encoder, experts and
   router: the **raw two-pass ceiling**, the first ``--ceiling-queries``
   queries in batches of ``--ceiling-batch`` in arrival order (what a perfect
   micro-batcher could gather at 32 clients), each batch through two forward
   passes (base encoder, then the routed experts' adapters as one mixed batch),
   and the same queries at once (length-sorted batches of 64, which no server
   can match); and the **single-query reference**: per query, two
   single-query forward passes (base, then its expert's adapter) and the FAISS
   search in its expert.
2. the **routed service** (``rr serve``) and the **single-model baseline**
   (bench/baseline_server.py: sentence-transformers + one FAISS index over the
   same documents behind one FastAPI route), both up at once, loaded in turn by
   bench/loadgen.py (a separate process, loopback only) for ``--duration``
   seconds per run, ``--rounds`` runs per level and server in ABBA order so a
   drift of the machine's load falls on both alike; runs are pooled.
3. the references again; the report takes the best of the two (higher
   ceiling, lower single-query p50), which can only make a target stricter.

Targets: at 32 clients routed throughput >= 0.8 x the ceiling; p50 at one
client <= 1.5 x the single-query reference; routed throughput >= 0.8 x the
single-model server at each level.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    COLLECTIONS,
    DEFAULT_DATASETS,
    REPO,
    LoadMeter,
    argument_parser,
    judged_test_queries,
    other_heavy_processes,
    percentiles,
    table,
    verdict,
    write_json,
)

BENCH = Path(__file__).resolve().parent


# ---------------------------------------------------------------------- experts
def copy_root(source: Path, target: Path, *, attempts: int = 3) -> list[str]:
    """Copy every expert under ``source`` (its manifest and the files it lists) to ``target``; read-only on source.

    An expert whose manifest changes while being copied (someone publishing
    into it) is copied again.
    """
    from experts import MANIFEST_FILE, Manifest, list_expert_dirs, sha256_file

    names = []
    for expert in list_expert_dirs(source):
        for _ in range(attempts):
            raw = (expert.path / MANIFEST_FILE).read_bytes()
            manifest = Manifest.model_validate_json(raw)
            destination = target / expert.path.name
            shutil.rmtree(destination, ignore_errors=True)
            for relative in manifest.files:
                (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(expert.path / relative, destination / relative)
            (destination / MANIFEST_FILE).write_bytes(raw)
            unchanged = (expert.path / MANIFEST_FILE).read_bytes() == raw
            if unchanged and all(sha256_file(destination / r) == digest for r, digest in manifest.files.items()):
                names.append(manifest.name)
                break
        else:
            raise SystemExit(f"expert {expert.path} kept changing while being copied; try again later")
    if not names:
        raise SystemExit(f"no experts under {source}")
    return names


def build_stand_ins(
    target: Path, datasets: Path, docs: int, *, top_layers: int | None = None, count: int = len(COLLECTIONS)
) -> list[str]:
    """``count`` experts on ``docs`` documents of the collections (see the module docstring): the first ``docs`` of
    each, then (above five) the next ``docs`` of each in turn, named ``<collection>-<part>``.

    ``top_layers``: their adapters on the encoder's top N layers only (None: on every layer).
    """
    from app.offline.building import build_pilots, pilot_texts_from_documents
    from bench.synthetic_experts import corpus_slice, random_adapters, synthetic_expert
    from experts import Encoder

    encoder = Encoder()
    folder = "adapters" if top_layers is None else f"adapters-top{top_layers}"
    adapters = random_adapters(encoder, target.parent / folder, count, top_layers=top_layers)
    names = []
    for i in range(count):
        collection, part = COLLECTIONS[i % len(COLLECTIONS)], i // len(COLLECTIONS)
        name = collection if count <= len(COLLECTIONS) else f"{collection}-{part}"
        corpus = corpus_slice(datasets, collection, target.parent / "corpora", docs, part=part)
        expert = synthetic_expert(
            target,
            name,
            encoder=encoder,
            adapter=adapters[i],
            corpus=corpus,
            embed=lambda texts: encoder.embed(texts, max_length=256),
        )
        build_pilots(expert, encoder, pilot_texts_from_documents(expert, sample=300), source="pseudo queries")
        names.append(name)
        print(f"  built stand-in expert {name} ({docs} documents)", flush=True)
    return names


# ---------------------------------------------------------------------- in-process references
class References:
    """The raw two-pass ceiling and the single-query reference, with the service's own encoder, experts and routing.

    Measured before the load runs and again after them; the report takes the
    best of the two (the higher ceiling, the lower single-query p50), which
    makes every target stricter, never looser, when the machine's load drifts.
    """

    def __init__(self, root: Path, texts: list[str], args: argparse.Namespace) -> None:
        from app.engine.engine import SearchEngine
        from app.settings import Settings
        from experts import Encoder

        settings = Settings(data_dir=root, torch_threads=args.torch_threads)
        self.encoder = Encoder(
            max_length=settings.max_length, batch_size=settings.batch_size, threads=args.torch_threads
        )
        self.engine = SearchEngine.open(root, self.encoder, settings.engine_config())
        self.qlen = settings.query_max_length
        self.texts, self.args = texts, args
        self.names = [d.experts[0] for d in self.engine.route(texts)]
        self.adapters = [self.engine.experts[name].adapter for name in self.names]
        self.encoder.embed(texts[:16], max_length=self.qlen)  # warm-up
        self.encoder.embed(texts[:16], expert=self.adapters[:16], max_length=self.qlen)

    def two_passes(self, batch: int, *, arrival_order: bool) -> float:
        """Queries per second through base pass + mixed-adapter pass, in batches of ``batch``."""
        n = self.args.ceiling_queries
        texts, adapters, qlen = self.texts[:n], self.adapters[:n], self.qlen
        started = time.perf_counter()
        step = batch if arrival_order else len(texts)  # all at once: embed() sorts them by length
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            self.encoder.embed(chunk, max_length=qlen, batch_size=batch)
            self.encoder.embed(chunk, expert=adapters[start : start + step], max_length=qlen, batch_size=batch)
        return len(texts) / (time.perf_counter() - started)

    def single_queries(self) -> dict:
        """Per query: base pass, expert pass, FAISS search in its expert (p50 of the sum and of each part)."""
        totals, parts = [], {"base": [], "expert": [], "faiss": []}
        rows = list(zip(self.texts, self.names, self.adapters))[: self.args.single_queries]
        for text, name, adapter in rows:
            t0 = time.perf_counter()
            self.encoder.embed([text], max_length=self.qlen)
            t1 = time.perf_counter()
            vector = self.encoder.embed([text], expert=adapter, max_length=self.qlen)
            t2 = time.perf_counter()
            self.engine.experts[name].collection.dense.search(vector, 10)
            t3 = time.perf_counter()
            totals.append((t3 - t0) * 1000)
            for key, seconds in (("base", t1 - t0), ("expert", t2 - t1), ("faiss", t3 - t2)):
                parts[key].append(seconds * 1000)
        return {
            "single_p50_ms": round(percentiles(totals, [50])[0], 2),
            "single_parts_p50_ms": {key: round(percentiles(v, [50])[0], 2) for key, v in parts.items()},
        }

    def measure(self) -> dict:
        meter = LoadMeter()
        result = {
            "ceiling_qps": round(self.two_passes(self.args.ceiling_batch, arrival_order=True), 1),
            "ceiling_sorted64_qps": round(self.two_passes(64, arrival_order=False), 1),
            **self.single_queries(),
        }
        result["load"] = meter.stop().__dict__
        return result

    def close(self) -> None:
        self.engine.close()


def best_of(phases: list[dict], args: argparse.Namespace, routed_to: dict[str, int]) -> dict:
    best = min(phases, key=lambda p: p["single_p50_ms"])
    return {
        "ceiling_qps": max(p["ceiling_qps"] for p in phases),
        "ceiling_batch": args.ceiling_batch,
        "ceiling_sorted64_qps": max(p["ceiling_sorted64_qps"] for p in phases),
        "single_p50_ms": best["single_p50_ms"],
        "single_parts_p50_ms": best["single_parts_p50_ms"],
        "routed_to": routed_to,
        "phases": phases,
    }


# ---------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, *, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited ({process.returncode}) while starting:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not up after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


class Server:
    def __init__(self, name: str, command: list[str], ready_path: str, port: int, logs: Path) -> None:
        self.name, self.port = name, port
        self.log = logs / f"{name}.log"
        self.process = subprocess.Popen(
            command, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ}
        )
        self.ready_url = f"http://127.0.0.1:{port}{ready_path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_servers(root: Path, logs: Path, args: argparse.Namespace) -> dict[str, Server]:
    routed_port, baseline_port = free_port(), free_port()
    threads = [] if args.torch_threads is None else ["--threads", str(args.torch_threads)]
    if args.torch_threads is not None:
        os.environ["RR_TORCH_THREADS"] = str(args.torch_threads)  # the routed server reads its settings from RR_*
    for item in args.service_env:
        key, _, value = item.partition("=")
        os.environ[key] = value  # inherited by the routed server (the baseline has no RR_* settings)
    routed = Server(
        "routed",
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--data",
            str(root),
            "--port",
            str(routed_port),
            "--log-level",
            args.log_level,
        ],
        "/readyz",
        routed_port,
        logs,
    )
    baseline = Server(
        "single-model",
        [
            sys.executable,
            str(BENCH / "baseline_server.py"),
            "--root",
            str(root),
            "--port",
            str(baseline_port),
            "--log-level",
            args.log_level,
            *threads,
        ],
        "/healthz",
        baseline_port,
        logs,
    )
    servers = {"routed": routed, "single-model": baseline}
    for server in servers.values():
        wait_until_up(server.ready_url, server.process, server.log)
    return servers


def load(
    server: Server, clients: int, queries_file: Path, out: Path, args: argparse.Namespace, pids: list[int]
) -> dict:
    """One bench/loadgen.py run against ``server``; its summary plus the machine's load meanwhile."""
    command = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--port",
        str(server.port),
        "--clients",
        str(clients),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--queries",
        str(queries_file),
        "--json",
        str(out),
    ]
    meter = LoadMeter(pids)
    subprocess.run(command, check=True, cwd=REPO)
    result = json.loads(out.read_text())
    result["load"] = meter.stop().__dict__
    return result


def pool(results: list[dict]) -> dict:
    """Several runs of one server at one level as one: summed counts, pooled latencies, weighted stage means."""
    seconds = sum(r["duration_s"] for r in results)
    latencies = [v for r in results for v in r["latencies_ms"]]
    p50, p95, p99 = percentiles(latencies)
    statuses: dict[str, int] = {}
    for r in results:
        for status, n in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    stages = {}
    for stage in {key for r in results for key in r["stage_totals"]}:
        total = sum(r["stage_totals"].get(stage, [0, 0])[0] for r in results)
        count = sum(r["stage_totals"].get(stage, [0, 0])[1] for r in results)
        stages[stage] = round(total / count, 2) if count else float("nan")
    batch_sum = sum(r["batch_totals"][0] for r in results)
    batch_count = sum(r["batch_totals"][1] for r in results)
    loads = [r["load"] for r in results]
    return {
        "runs": len(results),
        "seconds": seconds,
        "requests_ok": len(latencies),
        "throughput_rps": round(len(latencies) / seconds, 2),
        "throughput_rps_per_run": [r["throughput_rps"] for r in results],
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
        "mean_ms": round(sum(latencies) / len(latencies), 1) if latencies else float("nan"),
        "statuses": statuses,
        "errors": sum(n for s, n in statuses.items() if s != "200") + sum(r["failures"] for r in results),
        "stage_mean_ms": stages,
        "mean_batch_requests": round(batch_sum / batch_count, 2) if batch_count else None,
        "generator_cores": round(sum(r["generator_cores"] for r in results) / len(results), 3),
        "other_cores": round(sum(x["other_cores"] * x["seconds"] for x in loads) / sum(x["seconds"] for x in loads), 2),
        "loadavg": [min(x["loadavg_start"] for x in loads), max(x["loadavg_end"] for x in loads)],
    }


def profile(server: Server, clients: int, queries_file: Path, folder: Path, args: argparse.Namespace) -> Path | None:
    """One extra (uncounted) routed run at ``clients`` with py-spy sampling every thread of the server."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found: pip install -e '.[bench]'", file=sys.stderr)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"routed-{clients}-clients.txt"
    sampler = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(server.process.pid),
            "--duration",
            str(int(args.duration + args.warmup)),
            "--rate",
            "100",
            "--format",
            "raw",
            "--nonblocking",
            "--threads",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    load(server, clients, queries_file, folder / f"routed-{clients}-clients.json", args, [server.process.pid])
    _, errors = sampler.communicate(timeout=120)
    if sampler.returncode != 0:
        print(f"py-spy failed: {errors.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return out


# ---------------------------------------------------------------------- report
def report(refs: dict, runs: dict[str, dict[int, dict]], levels: list[int]) -> tuple[str, list[dict]]:
    routed, single = runs["routed"], runs["single-model"]
    rows = []
    for clients in levels:
        for name, results in runs.items():
            r = results[clients]
            rows.append(
                [
                    f"{name}, {clients} clients",
                    r["throughput_rps"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["throughput_rps"] / refs["ceiling_qps"],
                    r["mean_batch_requests"] or "-",
                    r["errors"],
                    r["generator_cores"],
                    r["other_cores"],
                ]
            )
    lines = [
        table(
            ["run", "req/s", "p50 ms", "p95 ms", "p99 ms", "/ ceiling", "batch", "errors", "gen cores", "other cores"],
            rows,
        ),
        "",
        f"raw two-pass ceiling: {refs['ceiling_qps']} queries/s (batches of {refs['ceiling_batch']} in arrival "
        f"order); all queries length-sorted in batches of 64: {refs['ceiling_sorted64_qps']} queries/s",
        f"single-query reference (base pass + expert pass + FAISS), p50: {refs['single_p50_ms']} ms "
        f"(parts {refs['single_parts_p50_ms']})",
        "",
    ]
    top = max(levels)
    targets = [
        [
            f"routed throughput at {top} clients / ceiling",
            routed[top]["throughput_rps"] / refs["ceiling_qps"],
            ">= 0.8",
        ],
        [
            "  (against the length-sorted batch-64 ceiling)",
            routed[top]["throughput_rps"] / refs["ceiling_sorted64_qps"],
            ">= 0.8",
        ],
    ]
    if 1 in routed:
        targets.append(
            ["routed p50 at 1 client / single-query reference", routed[1]["p50_ms"] / refs["single_p50_ms"], "<= 1.5"]
        )
    for clients in levels:
        ratio = routed[clients]["throughput_rps"] / single[clients]["throughput_rps"]
        targets.append([f"routed / single-model throughput, {clients} clients", ratio, ">= 0.8"])
    for row in targets:
        row.append(verdict(row[1], float(row[2].split()[1]), at_most=row[2].startswith("<=")))
    lines.append(table(["target", "ratio", "target", "verdict"], targets))
    stages = ("queue_ms", "base_ms", "route_ms", "expert_ms", "search_ms", "total_ms")
    stage_rows = [
        [
            f"routed, {c} clients",
            *(routed[c]["stage_mean_ms"].get(s, float("nan")) for s in stages),
            routed[c]["mean_ms"],
        ]
        for c in levels
    ]
    lines += [
        "",
        "mean ms per stage inside the service (each response's timings_ms) and as the client saw it:",
        table(["run", "queue", "base", "route", "expert", "search", "server total", "client"], stage_rows),
    ]
    return "\n".join(lines), [dict(zip(["name", "ratio", "target", "verdict"], t)) for t in targets]


def main() -> None:
    parser = argument_parser(__doc__, datasets=False)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="experts root to serve (copied, never modified); default: build five stand-in experts",
    )
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--docs", type=int, default=300, help="documents per stand-in expert (without --root)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per level and server, in ABBA order")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each run")
    parser.add_argument("--ceiling-batch", type=int, default=32, help="batch of the raw ceiling (arrival order)")
    parser.add_argument("--ceiling-queries", type=int, default=256, help="queries (the first, shuffled) in the ceiling")
    parser.add_argument("--single-queries", type=int, default=40, help="queries timed for the single-query reference")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads everywhere (RR_TORCH_THREADS for the service); default: torch's own choice",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="RR_NAME=VALUE",
        help="a setting for the routed service, e.g. RR_ROUTER_EVIDENCE=none (repeatable)",
    )
    parser.add_argument("--log-level", default="warning", help="both servers' log level (warning: no access log)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="also profile the routed server with py-spy "
        "(extra, uncounted runs at the lowest and highest level); raw stacks land here",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    levels = sorted({int(v) for v in args.levels.split(",")})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    queries = judged_test_queries(args.datasets)
    texts = [text for _, text in queries]
    print(f"{len(texts)} test queries from {', '.join(COLLECTIONS)}; other busy processes now:")
    for line in other_heavy_processes() or ["(none above 0.05 cores)"]:
        print("  " + line)
    with tempfile.TemporaryDirectory(prefix="rr-search-load-") as scratch:
        scratch = Path(scratch)
        root = scratch / "experts"
        root.mkdir()
        if args.root is not None:
            experts, source = copy_root(args.root, root), f"copy of {args.root}"
        else:
            experts = build_stand_ins(root, args.datasets, args.docs)
            source = f"stand-ins, {args.docs} docs each, random adapters"
        print(f"experts ({source}): {experts}", flush=True)
        queries_file = scratch / "queries.json"
        queries_file.write_text(json.dumps([{"query": text, "k": 10} for text in texts]))

        references = References(root, texts, args)
        phases = [references.measure()]
        print(f"references, before: {json.dumps(phases[0])}", flush=True)
        servers = start_servers(root, scratch, args)
        pids = [s.process.pid for s in servers.values()]
        raw: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in servers}
        profiles = {}
        try:
            for round_ in range(args.rounds):
                for clients in levels:
                    order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                    for name in order:
                        out = scratch / f"{name}-{clients}-{round_}.json"
                        result = load(servers[name], clients, queries_file, out, args, pids)
                        raw[name][clients].append(result)
                        print(
                            f"round {round_ + 1}: {name:>12}, {clients:>2} clients: {result['throughput_rps']:7.1f} "
                            f"req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; {load_line(result)}",
                            flush=True,
                        )
            if args.profile is not None:
                for clients in sorted({min(levels), max(levels)}):
                    path = profile(servers["routed"], clients, queries_file, args.profile, args)
                    if path is not None:
                        profiles[clients] = str(path)
                        print(f"profile of the routed server at {clients} clients: {path}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        phases.append(references.measure())
        print(f"references, after: {json.dumps(phases[1])}", flush=True)
        refs = best_of(phases, args, {n: references.names.count(n) for n in sorted(set(references.names))})
        references.close()
    runs = {name: {clients: pool(results) for clients, results in by_level.items()} for name, by_level in raw.items()}
    text, targets = report(refs, runs, levels)
    print("\n" + text)
    for name in raw:  # the raw latencies are pooled above; keep the JSON small
        for results in raw[name].values():
            for result in results:
                result.pop("latencies_ms", None)
    write_json(
        args.json,
        {
            "service_env": args.service_env,
            "experts": experts,
            "source": source,
            "references": refs,
            "runs": runs,
            "raw_runs": raw,
            "profiles": profiles,
            "targets": targets,
        },
    )


def load_line(result: dict) -> str:
    load = result["load"]
    return f"others used {load['other_cores']:.2f} cores, load average {load['loadavg_end']:.2f}"


if __name__ == "__main__":
    main()
