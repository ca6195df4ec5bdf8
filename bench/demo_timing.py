"""How soon ``rr demo`` answers and how long it takes to finish, on a fresh data directory, measured over HTTP (issue 19).

Run by hand (not in CI). The full measurement, what ``make demo`` does (five collections, whole
corpora, every expert trained; 20-40 minutes of both cores, so on a machine nobody else needs)::

    nice -n 5 python bench/demo_timing.py --json demo_timing.json

A small verification run (a minute or two, then a few minutes with training)::

    python bench/demo_timing.py --collections cranfield,cacm --max-docs 150 --no-train
    python bench/demo_timing.py --collections cranfield --max-docs 100

It starts ``rr --data-dir <new temporary directory> demo`` as a subprocess (no ``RR_*`` variable
from this shell; the datasets from ``--datasets``; a free loopback port; the demo's own log level),
so every expert is built from nothing, as after ``make install`` on a fresh clone (the install itself
is not timed); ``--env RR_NAME=VALUE`` gives the demo a setting (``--env RR_TORCH_THREADS=2``: on
2 cores the service's torch runs 1 thread by default, so building and training use one core). Then it polls the service, as a user would, and times from the moment the process
is started:

* the first HTTP answer of any kind (``GET /healthz``; target: <= 60 s, the issue's "serves within
  60 s of the install finishing");
* ``/readyz`` answering 200 (the first expert serves);
* the first ``POST /search`` answered 200 with hits;
* for each expert, when ``GET /experts`` first lists it loaded (published, untrained) and when it
  first lists its trained version serving;
* the total: every expert trained (with ``--no-train``: every expert published); target for the full
  demo: <= 15 minutes on 2 cores. A smaller run gets no verdict on it.

Times are to within the poll interval (``--poll``, 1 s; 0.1 s until the first answer). The JSON also
holds every change of what ``/experts`` said each expert was doing (indexing, pilots, training
step n/N), the demo's peak RSS, and the machine's load. The demo is stopped with SIGINT (as Ctrl-C),
then SIGTERM, then SIGKILL; on any failure the tail of its log is printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    COLLECTIONS,
    REPO,
    LoadMeter,
    argument_parser,
    other_heavy_processes,
    table,
    verdict,
    write_json,
)

SERVE_TARGET_S = 60.0
TOTAL_TARGET_S = 15 * 60.0
QUERY = "lift of a swept wing at supersonic speed"  # the demo's own suggestion


class DemoFailed(RuntimeError):
    """The demo exited, reported a failed expert, or did not finish in time; the message says which."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process, in MiB (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def stop(process: subprocess.Popen[bytes]) -> tuple[str, float]:
    """End the demo as Ctrl-C does, escalating if it hangs: (how it ended, seconds it took)."""
    started = time.monotonic()
    for sig, grace in ((signal.SIGINT, 60.0), (signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            process.wait(timeout=grace)
            return f"{signal.Signals(sig).name} -> exit {process.returncode}", time.monotonic() - started
        except subprocess.TimeoutExpired:
            continue
    return f"it had exited by itself (exit {process.returncode})", time.monotonic() - started


class Watch:
    """What the service has said so far, each milestone as seconds since the demo was started."""

    def __init__(self, names: list[str], *, train: bool) -> None:
        self.names, self.train = names, train
        self.first_answer: float | None = None
        self.ready: float | None = None
        self.search: float | None = None
        self.search_expert: str | None = None
        self.published: dict[str, float] = {}
        self.trained: dict[str, float] = {}
        self.doing: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.failed_polls = 0  # rounds cut short by a timeout or a refused connection

    def finished(self) -> float | None:
        """When the last expert was seen trained (published, without training); None while one is not."""
        finished = self.trained if self.train else self.published
        if not all(name in finished for name in self.names):
            return None
        return max(finished[name] for name in self.names)

    def note_experts(self, rows: list[dict[str, Any]], now: float) -> None:
        """Record one ``GET /experts`` listing; raises :class:`DemoFailed` on a failed build or training."""
        for row in rows:
            name = row["name"]
            trained = bool((row.get("adapter") or {}).get("trained"))
            doing = row.get("building") or ("trained, serving" if trained else row["state"])
            if self.doing.get(name) != doing:
                self.doing[name] = doing
                self.events.append({"t_s": round(now, 1), "expert": name, "doing": doing})
            if row["state"] == "failed" or doing.startswith("training failed"):
                raise DemoFailed(f"expert {name!r} failed: {row.get('error') or doing}")
            if row["state"] == "loaded":
                self.published.setdefault(name, now)
                if trained:
                    self.trained.setdefault(name, now)


def poll_once(client: httpx.Client, watch: Watch, started: float) -> None:
    """One round of questions to a service that answers: ``/readyz``, ``/experts``, a search until one has hits."""
    if watch.ready is None and client.get("/readyz").status_code == 200:
        watch.ready = time.monotonic() - started
    listing = client.get("/experts")
    if listing.status_code == 200:
        watch.note_experts(listing.json()["experts"], time.monotonic() - started)
    if watch.ready is not None and watch.search is None:
        answer = client.post("/search", json={"query": QUERY, "k": 3})
        if answer.status_code == 200 and answer.json()["results"][0]["hits"]:
            watch.search = time.monotonic() - started
            watch.search_expert = answer.json()["results"][0]["expert"]


def watch_demo(
    process: subprocess.Popen[bytes], url: str, watch: Watch, *, started: float, poll: float, timeout: float
) -> None:
    """Poll the demo until it has finished (see :meth:`Watch.finished`) or fails."""
    client = httpx.Client(base_url=url, timeout=30)
    try:
        while watch.finished() is None:
            now = time.monotonic() - started
            if process.poll() is not None:
                raise DemoFailed(f"the demo exited ({process.returncode}) after {now:.0f}s")
            if now > timeout:
                raise DemoFailed(f"not finished after {timeout:.0f}s (--timeout)")
            if watch.first_answer is None:
                try:
                    client.get("/healthz")
                    watch.first_answer = time.monotonic() - started
                except httpx.TransportError:
                    time.sleep(0.1)
                continue
            try:
                poll_once(client, watch, started)
            except httpx.TransportError:  # a slow answer on a busy machine; an exit is caught above
                watch.failed_polls += 1
            time.sleep(poll)
    finally:
        client.close()


def rows_of(watch: Watch, *, total: float | None, full: bool) -> list[list[Any]]:
    """The milestones table: what, seconds since start, target, verdict."""

    def seconds(value: float | None) -> float:
        return float("nan") if value is None else value

    serve = seconds(watch.first_answer)
    rows: list[list[Any]] = [
        ["first HTTP answer (service up)", serve, SERVE_TARGET_S, verdict(serve, SERVE_TARGET_S, at_most=True)],
        ["/readyz 200 (first expert serves)", seconds(watch.ready), "", ""],
        [f"first /search with hits ({watch.search_expert or '-'})", seconds(watch.search), "", ""],
    ]
    for name in sorted(watch.names, key=lambda name: watch.published.get(name, float("inf"))):  # as published
        rows.append([f"{name} published (untrained)", seconds(watch.published.get(name)), "", ""])
        if watch.train:
            rows.append([f"{name} trained version serving", seconds(watch.trained.get(name)), "", ""])
    what = "every expert trained" if watch.train else "every expert published (--no-train)"
    total_s = seconds(total)
    judged = verdict(total_s, TOTAL_TARGET_S, at_most=True) if full else "n/a: not the full demo"
    rows.append([what, total_s, TOTAL_TARGET_S, judged])
    return rows


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collections", default=",".join(COLLECTIONS), help="passed to rr demo (default: all five)")
    parser.add_argument("--max-docs", type=int, default=None, help="passed to rr demo (default: whole corpora)")
    parser.add_argument("--no-train", action="store_true", help="passed to rr demo: publish untrained experts only")
    parser.add_argument("--port", type=int, default=0, help="the demo's port (default 0: a free loopback port)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls once the service answers")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    parser.add_argument(
        "--env", action="append", default=[], metavar="RR_NAME=VALUE", help="a setting for the demo (repeatable)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory (its path is printed)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    if any("=" not in item or not item.startswith("RR_") for item in args.env):
        parser.error(f"--env takes RR_NAME=VALUE settings, got {args.env}")
    names = [name.strip() for name in args.collections.split(",") if name.strip()]
    train = not args.no_train
    full = sorted(names) == sorted(COLLECTIONS) and args.max_docs is None and train
    port = args.port or free_port()

    scratch = Path(tempfile.mkdtemp(prefix="rr-demo-timing-"))
    data = scratch / "experts"  # does not exist yet, as data/experts on a fresh clone
    log = scratch / "demo.log"
    argv = [sys.executable, "-m", "app", "--data-dir", str(data), "demo", "--collections", ",".join(names)]
    argv += ["--datasets", str(args.datasets), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--max-docs", str(args.max_docs)] if args.max_docs else []
    argv += [] if train else ["--no-train"]
    settings = dict(item.split("=", 1) for item in args.env)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RR_")} | {"PYTHONPATH": str(REPO)}
    environment |= settings
    others_before = other_heavy_processes()
    print("other busy processes now:", *(others_before or ["(none above 0.05 cores)"]), sep="\n  ")
    print("running:", *(f"{k}={v}" for k, v in settings.items()), " ".join(argv[1:]), f"\nlog: {log}", flush=True)

    watch = Watch(names, train=train)
    failure: str | None = None
    started = time.monotonic()
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, env=environment, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    meter = LoadMeter([process.pid])
    try:
        watch_demo(process, f"http://127.0.0.1:{port}", watch, started=started, poll=args.poll, timeout=args.timeout)
    except Exception as exc:  # noqa: BLE001 (whatever went wrong, the demo is stopped and its log shown)
        failure = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        failure = "interrupted"
    total = watch.finished()
    load = meter.stop()
    rss = peak_rss_mib(process.pid)
    others_after = other_heavy_processes()
    ended, stop_s = stop(process)

    print()
    print(table(["milestone", "seconds since start", "target s", "verdict"], rows_of(watch, total=total, full=full)))
    scope = "the full demo" if full else f"NOT the full demo: {len(names)} collection(s)"
    if not full:
        scope += (f", first {args.max_docs} documents" if args.max_docs else "") + ("" if train else ", no training")
    memory = "unknown (it had exited)" if rss is None else f"{rss:.0f} MiB"
    print(f"\nrun: {scope}; demo peak RSS {memory}; stopped: {ended}, in {stop_s:.1f}s")
    if watch.failed_polls:
        print(f"{watch.failed_polls} poll round(s) cut short by a timeout or a refused connection")
    print("load:", load.line())
    print("other busy processes at the end:", *(others_after or ["(none above 0.05 cores)"]), sep="\n  ")
    if failure is not None:
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
        print(f"\nFAILED: {failure}\n--- the last lines of {log}:\n{tail}")
    write_json(
        args.json,
        {
            "collections": names,
            "max_docs": args.max_docs,
            "train": train,
            "settings": settings,
            "full_demo": full,
            "failure": failure,
            "first_answer_s": watch.first_answer,
            "ready_s": watch.ready,
            "first_search_s": watch.search,
            "first_search_expert": watch.search_expert,
            "published_s": watch.published,
            "trained_s": watch.trained,
            "total_s": total,
            "targets_s": {"serving": SERVE_TARGET_S, "total_full_demo": TOTAL_TARGET_S},
            "events": watch.events,
            "demo_peak_rss_mib": rss,
            "stopped": ended,
            "stop_s": round(stop_s, 1),
            "load": vars(load),
            "other_processes": {"before": others_before, "after": others_after},
            "poll_s": args.poll,
            "failed_polls": watch.failed_polls,
        },
    )
    if args.keep or failure is not None:
        print(f"kept {scratch}")
    else:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    if failure is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
