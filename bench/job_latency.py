"""Search latency while a job runs: one client's ``/search`` p50 on an idle server against the same server running
an index job and a train job (issue 19: "searches keep their latency while a job runs").

Run by hand (not in CI), on a root of built experts (``rr demo --no-serve`` builds one), 3-6 minutes::

    nice -n 5 python bench/job_latency.py --root data/experts --json docs/benchmarks-2026-12-06/job_latency.json
    python bench/job_latency.py --root data/experts --phase-seconds 15 --steps 60     # a quick look

The experts named by ``--experts`` are linked file by file into a temporary data root and served by
one real ``rr serve`` (its defaults: on 2 cores, one torch thread per pass). One client sends the
five shared collections' judged test queries one after another (closed loop, ``k`` = 10) through
five phases, each ``--phase-seconds`` long or as long as its job runs:

1. idle;
2. an **index job** (``POST /admin/jobs``, ``kind: index``) building a new expert from
   ``--corpus`` (linked into the data root);
3. idle again;
4. a **train job** (``kind: train``, ``--steps`` steps) training a new expert on the same corpus
   (it indexes the corpus first, then trains);
5. idle again.

Printed: per phase the searches, p50, p95 and the ratio of p50 to the idle phases' pooled p50, and
the job's own throughput (documents/s while indexing, steps/s while training). A job's thread
embeds in bulk passes that yield to searches between passes (``experts.model_lock``), so the
searches wait at most for one bulk pass; on 2 cores each side has one core.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import (  # noqa: E402
    argument_parser,
    judged_test_queries,
    other_heavy_processes,
    percentiles,
    start_rr_serve,
    table,
    write_json,
)

ADMIN_KEY = "bench-admin-key"


class Searcher:
    """One closed-loop client on its own thread: (start time, latency ms) of every search, in order."""

    def __init__(self, url: str, queries: list[str]) -> None:
        self.url, self.queries = url, queries
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.failure_samples: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            i = 0
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = http.post("/search", json={"query": self.queries[i % len(self.queries)], "k": 10})
                except httpx.TransportError as exc:
                    self.failures += 1
                    self.failure_samples.append(f"{type(exc).__name__}: {exc}")
                    return
                if response.status_code == 200:
                    self.samples.append((started, 1000 * (time.perf_counter() - started)))
                else:
                    self.failures += 1
                    if len(self.failure_samples) < 5:
                        self.failure_samples.append(f"{response.status_code}: {response.text[:300]}")
                i += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> list[float]:
        return [latency for at, latency in self.samples if start <= at < end]


def link_experts(source: Path, names: list[str], root: Path) -> None:
    """Each expert's directory linked file by file (the server writes only its registry and job files)."""
    for name in names:
        shutil.copytree(source / name, root / name, copy_function=os.link)


def run_job(http: httpx.Client, body: dict, *, minimum: float) -> dict:
    """Submit a job and follow it to its end (at least ``minimum`` seconds); its record and throughput."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = http.post("/admin/jobs", json=body, headers=headers)
    response.raise_for_status()
    job = response.json()
    started = time.perf_counter()
    rates: dict[str, list[tuple[float, int]]] = {}
    while True:
        job = http.get(f"/admin/jobs/{job['id']}", headers=headers).json()
        progress = job["progress"]
        if progress.get("phase") in ("indexing", "training") and progress.get("done") is not None:
            rates.setdefault(progress["phase"], []).append((time.perf_counter(), int(progress["done"])))
        if job["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.5)
    if job["state"] != "succeeded":
        raise SystemExit(f"the {body['kind']} job ended {job['state']}: {job.get('error')}")
    while time.perf_counter() - started < minimum:
        time.sleep(0.2)
    throughput = {}
    for phase, points in rates.items():
        (t0, d0), (t1, d1) = points[0], points[-1]
        throughput[phase] = (d1 - d0) / (t1 - t0) if t1 > t0 else None
    return {"id": job["id"], "seconds": time.perf_counter() - started, "throughput": throughput}


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--root", type=Path, required=True, help="built experts, one per shared collection")
    parser.add_argument("--experts", default="scifact,cranfield,cacm,cisi,npl")
    parser.add_argument("--corpus", type=Path, default=None, help="the jobs' corpus (default: cranfield's)")
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    parser.add_argument("--steps", type=int, default=300, help="the train job's steps (the default recipe's 300)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    corpus = args.corpus or args.datasets / "cranfield" / "corpus.jsonl"
    queries = [text[:2000] for _, text in judged_test_queries(args.datasets)]  # /search takes up to 2000 characters
    busy = other_heavy_processes()
    if busy:
        print(f"other heavy processes: {busy}")

    with tempfile.TemporaryDirectory(prefix="rr-job-latency-") as scratch:
        root = Path(scratch) / "experts"
        root.mkdir()
        link_experts(args.root, [n for n in args.experts.split(",") if n], root)
        (root / "incoming").mkdir()
        os.link(corpus, root / "incoming" / corpus.name)
        process, url = start_rr_serve(root, Path(scratch) / "server.log", {"RR_ADMIN_KEY": ADMIN_KEY})
        searcher = Searcher(url, queries)
        phases: list[tuple[str, float, float]] = []
        jobs: dict[str, dict] = {}
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                for _ in range(5):  # warm-up: models, caches, the first union of the votes
                    http.post("/search", json={"query": queries[0], "k": 10})
                searcher.start()

                def idle(label: str) -> None:
                    start = time.perf_counter()
                    time.sleep(args.phase_seconds)
                    phases.append((label, start, time.perf_counter()))

                idle("idle 1")
                start = time.perf_counter()
                jobs["index"] = run_job(
                    http,
                    {
                        "kind": "index",
                        "expert": "job-index",
                        "corpus": f"incoming/{corpus.name}",
                        "skip_malformed": True,
                    },
                    minimum=0,
                )
                phases.append(("index job", start, time.perf_counter()))
                idle("idle 2")
                start = time.perf_counter()
                body = {
                    "kind": "train",
                    "expert": "job-train",
                    "corpus": f"incoming/{corpus.name}",
                    "skip_malformed": True,
                }
                jobs["train"] = run_job(http, body | {"steps": args.steps}, minimum=0)
                phases.append(("train job", start, time.perf_counter()))
                idle("idle 3")
                searcher.stop()
        finally:
            process.terminate()
            process.wait(timeout=60)

    idle_all = [ms for label, s, e in phases if label.startswith("idle") for ms in searcher.between(s, e)]
    base_p50 = percentiles(idle_all, (50,))[0]
    rows, report = [], {}
    for label, start, end in phases:
        values = searcher.between(start, end)
        p50, p95 = percentiles(values, (50, 95))
        rows.append([label, f"{end - start:.0f}", len(values), f"{p50:.1f}", f"{p95:.1f}", f"{p50 / base_p50:.2f}"])
        report[label] = {"seconds": end - start, "searches": len(values), "p50_ms": p50, "p95_ms": p95,
                         "p50_vs_idle": p50 / base_p50}  # fmt: skip
    print(table(["phase", "s", "searches", "p50 ms", "p95 ms", "p50 / idle p50"], rows))
    for kind, job in jobs.items():
        rates = ", ".join(f"{phase} {rate:.1f}/s" for phase, rate in job["throughput"].items() if rate)
        print(f"{kind} job: {job['seconds']:.0f}s ({rates})")
    print(f"failed searches: {searcher.failures}; idle p50 {base_p50:.1f} ms over {len(idle_all)} searches")
    for failure in searcher.failure_samples:
        print(f"  failed: {failure}")
    write_json(args.json, {"phases": report, "jobs": jobs, "idle_p50_ms": base_p50, "other_processes": busy,
                           "failures": searcher.failures, "failure_samples": searcher.failure_samples})  # fmt: skip


if __name__ == "__main__":
    main()
