"""What every benchmark here shares: test queries, machine-load accounting, memory readings, tables, JSON.

The machine these run on has 2 cores that other jobs share, so no absolute
figure means much on its own: each benchmark times its baseline in the same
run and reports ratios, and :class:`LoadMeter` records how much of the CPU
other processes took meanwhile, so a reader can judge how noisy a run was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: ../shared/datasets beside the checkout, as the tests and bench/train_quality.py expect.
DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")
_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- queries
def argument_parser(doc: str, *, datasets: bool = True) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as the description, the rest (the commands) as the epilog."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if datasets:
        parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    return parser


def judged_test_queries(
    datasets: Path, collections: Sequence[str] = COLLECTIONS, *, seed: int = 0
) -> list[tuple[str, str]]:
    """Every judged test query of ``collections`` as (collection, text), shuffled so the collections mix."""
    from experts.labelled import judged_queries, read_qrels, read_queries

    rows: list[tuple[str, str]] = []
    for name in collections:
        folder = Path(datasets) / name
        queries = judged_queries(read_queries(folder / "queries.jsonl"), read_qrels(folder / "qrels" / "test.tsv"))
        rows.extend((name, text) for text in queries.values())
    random.Random(seed).shuffle(rows)
    return rows


# ---------------------------------------------------------------------- load
def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores together, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def _own_cpu_seconds(extra_pids: Sequence[int] = ()) -> float:
    """CPU seconds of this process, its finished children, and the live processes ``extra_pids``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime
    for pid in extra_pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        except (OSError, IndexError, ValueError):
            pass  # it exited meanwhile (then RUSAGE_CHILDREN has it once waited for)
    return total


def other_heavy_processes(limit: int = 3, *, interval: float = 0.5) -> list[str]:
    """The busiest processes outside this process tree right now ("<cores> <command>"), via psutil if present."""
    try:
        import psutil
    except ImportError:
        return []
    me = psutil.Process()
    ours = {me.pid, *(child.pid for child in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "cmdline", "name"]) if p.pid not in ours]
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(interval)
    busy = []
    for proc in procs:
        try:
            share = proc.cpu_percent(None) / 100
        except psutil.Error:
            continue
        if share >= 0.05:
            command = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])
            busy.append((share, command[:110]))
    return [f"{share:.2f} cores: {command}" for share, command in sorted(busy, reverse=True)[:limit]]


@dataclass
class LoadReading:
    """CPU use of the whole machine over one phase, split into ours and everyone else's (in cores)."""

    seconds: float
    cores: int
    machine_busy_cores: float
    own_cores: float
    other_cores: float
    loadavg_start: float
    loadavg_end: float

    def line(self) -> str:
        return (
            f"{self.seconds:.0f}s: machine busy {self.machine_busy_cores:.2f}/{self.cores} cores, this benchmark "
            f"{self.own_cores:.2f}, others {self.other_cores:.2f}; load average {self.loadavg_start:.2f} -> "
            f"{self.loadavg_end:.2f}"
        )


class LoadMeter:
    """Measures one phase: ``meter = LoadMeter(pids); ...; reading = meter.stop()``.

    ``pids`` are live processes of this benchmark (servers) whose CPU counts as
    ours; this process and the children it has waited for always do.
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self.started = time.perf_counter()
        self.ticks = _machine_ticks()
        self.own = _own_cpu_seconds(self.pids)
        self.loadavg = os.getloadavg()[0]

    def stop(self) -> LoadReading:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        busy, total = _machine_ticks()
        machine = (busy - self.ticks[0]) / _TICKS / seconds
        own = (_own_cpu_seconds(self.pids) - self.own) / seconds
        return LoadReading(
            seconds=round(seconds, 1),
            cores=os.cpu_count() or 1,
            machine_busy_cores=round(machine, 2),
            own_cores=round(own, 2),
            other_cores=round(max(machine - own, 0.0), 2),
            loadavg_start=round(self.loadavg, 2),
            loadavg_end=round(os.getloadavg()[0], 2),
        )


# ---------------------------------------------------------------------- memory
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hiwater_rss_mib() -> float:
    """Peak RSS of this process's memory map (VmHWM): what :func:`reset_peak_rss` resets.

    Unlike ru_maxrss it does not keep the peak recorded when a thread exited.
    """
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mib()


def reset_peak_rss() -> bool:
    """Start the peak (VmHWM) afresh from the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    """Resident set size of this process now."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def directory_mib(path: Path) -> float:
    """Bytes of every file under ``path``, in MiB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


# ---------------------------------------------------------------------- numbers and output
def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    """The ``qs`` percentiles of ``values`` (NaN for none)."""
    if len(values) == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def verdict(value: float, target: float, *, at_most: bool = False) -> str:
    """'met' when ``value`` >= ``target`` (or <= with ``at_most``), else 'missed'."""
    if value != value:  # NaN
        return "n/a"
    return "met" if (value <= target if at_most else value >= target) else "missed"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned; floats with 3 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:
                return "-"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def code_state() -> dict[str, Any]:
    """The commit measured and the service files changed on top of it (the tree may hold others' work)."""
    import hashlib
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    packages = ["app", "experts", "router", "index"]
    changed = git("status", "--porcelain", "--", *packages).splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed_files": [line[3:] for line in changed],
        "diff_sha256": hashlib.sha256(git("diff", "HEAD", "--", *packages).encode()).hexdigest()[:12],
    }


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the command line and the code measured) as indented JSON, when a path is given."""
    if path is None:
        return
    document = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "code": code_state(), **payload}
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------------- a server to measure
def start_rr_serve(
    root: Path, log: Path, env: dict[str, str], *, checkout: Path = REPO, timeout: float = 300
) -> tuple[Any, str]:
    """``rr serve`` on ``root`` on a free loopback port, no ``RR_*`` from this shell but ``env``: (process, url).

    ``checkout``: whose code serves (another checkout's, to compare with it; this interpreter runs it).
    Waits until ``/readyz`` answers 200; exits with the log's tail if it does not within ``timeout`` seconds.
    """
    import socket
    import subprocess

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RR_")} | {"PYTHONPATH": str(checkout)} | env
    argv = [sys.executable, "-m", "app", "serve", "--data", str(root), "--port", str(port), "--log-level", "warning"]
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, env=environment, stdout=sink, stderr=subprocess.STDOUT, cwd=checkout)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"server not ready: {log.read_text()[-2000:]}")
