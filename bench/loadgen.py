"""Closed-loop load generator for ``POST /search`` (or ``--path``) on a loopback server (bench/search_load.py, bench/peer_infinity.py).

Run by hand (not in CI)::

    python bench/loadgen.py --port 8000 --clients 8 --duration 20 --queries queries.json --json out.json

``--clients`` connections each send one request, wait for its answer, and
send the next (closed loop), cycling through the query texts from different
starting points. Requests started during the ``--warmup`` seconds are not
counted; after ``--duration`` seconds of measurement no new request starts,
and the run stops by itself. Only loopback addresses are accepted.

It speaks minimal HTTP/1.1 with keep-alive over asyncio streams instead of
using an HTTP client library: on a 2-core machine the generator shares the
CPU with the server it measures, and this costs a fraction of what a full
client does per request. Its own CPU use is reported (``generator_cores``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import resource
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Stage timings the routed service returns per request (``timings_ms``), averaged in the report.
STAGES = ("queue_ms", "base_ms", "route_ms", "expert_ms", "search_ms", "total_ms")


@dataclass
class Sample:
    started: float
    latency: float
    status: int
    timings: dict[str, float] | None = None
    batch_requests: int | None = None
    #: Experts a routed query was searched in (mean over the request's queries; None: not a routed search).
    experts_searched: float | None = None


@dataclass
class Recorder:
    measure_from: float
    measure_until: float
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        self.writer.write(head + body)
        await self.writer.drain()
        status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise RuntimeError(f"response without Content-Length (headers {headers}); this client needs one")
        payload = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def client(
    host: str, port: int, path: str, bodies: list[bytes], start: int, recorder: Recorder, timeout: float
) -> None:
    connection = Connection(host, port)
    position = start
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < recorder.measure_until:
            body = bodies[position % len(bodies)]
            position += 1
            began = loop.time()
            try:
                status, payload = await asyncio.wait_for(connection.post(path, body), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                recorder.failures.append(f"{type(exc).__name__}: {exc}")
                await connection.close()
                await asyncio.sleep(0.1)
                continue
            ended = loop.time()
            if began < recorder.measure_from:
                continue  # warm-up
            sample = Sample(began, ended - began, status)
            if status == 200:
                answer = json.loads(payload)
                timings = answer.get("timings_ms")
                if isinstance(timings, dict):
                    sample.timings = {key: float(timings[key]) for key in STAGES if key in timings}
                    sample.batch_requests = (answer.get("batch") or {}).get("requests")
                routes = [
                    r["route"]["experts"] for r in answer.get("results") or [] if isinstance(r, dict) and r.get("route")
                ]
                if routes:
                    sample.experts_searched = sum(len(e) for e in routes) / len(routes)
            recorder.samples.append(sample)
    finally:
        await connection.close()


async def drive(args: argparse.Namespace, bodies: list[bytes]) -> dict:
    loop = asyncio.get_running_loop()
    now = loop.time()
    recorder = Recorder(measure_from=now + args.warmup, measure_until=now + args.warmup + args.duration)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    stride = max(len(bodies) // args.clients, 1)
    tasks = [
        asyncio.create_task(client(args.host, args.port, args.path, bodies, i * stride, recorder, args.timeout))
        for i in range(args.clients)
    ]
    await asyncio.gather(*tasks)
    wall = loop.time() - now
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return summarise(recorder, args, generator_cores=cpu / wall)


def summarise(recorder: Recorder, args: argparse.Namespace, *, generator_cores: float) -> dict:
    # Counted: requests started inside the measurement window (the last ones may end just after it).
    counted = [s for s in recorder.samples if s.started < recorder.measure_until]
    ok = [s for s in counted if s.status == 200]
    latencies_ms = np.array([s.latency * 1000 for s in ok]) if ok else np.array([float("nan")])
    statuses: dict[str, int] = {}
    for sample in counted:
        statuses[str(sample.status)] = statuses.get(str(sample.status), 0) + 1
    stages, stage_totals = {}, {}
    for stage in STAGES:
        values = [s.timings[stage] for s in ok if s.timings and stage in s.timings]
        if values:
            stages[stage] = round(float(np.mean(values)), 2)
            stage_totals[stage] = [round(float(np.sum(values)), 3), len(values)]
    batches = [s.batch_requests for s in ok if s.batch_requests]
    searched = [s.experts_searched for s in ok if s.experts_searched is not None]
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "requests_ok": len(ok),
        "statuses": statuses,
        "failures": len(recorder.failures),
        "first_failures": recorder.failures[:3],
        "throughput_rps": round(len(ok) / args.duration, 2),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "mean_ms": round(float(np.mean(latencies_ms)), 1),
        "stage_mean_ms": stages,
        "mean_batch_requests": round(float(np.mean(batches)), 2) if batches else None,
        "mean_experts_searched": round(float(np.mean(searched)), 2) if searched else None,
        "generator_cores": round(generator_cores, 3),
        # Raw material for pooling several runs: every latency, and stage sums with their counts.
        "latencies_ms": [round(float(v), 2) for v in latencies_ms] if ok else [],
        "stage_totals": stage_totals,
        "batch_totals": [int(np.sum(batches)), len(batches)] if batches else [0, 0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (anything else is refused)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1, help="concurrent closed-loop clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds run first and not counted")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before one request counts as failed")
    parser.add_argument(
        "--queries", type=Path, required=True, help='JSON list of request bodies, e.g. [{"query": "...", "k": 10}]'
    )
    parser.add_argument("--path", default="/search", help="the route posted to (e.g. /v1/embeddings, /embeddings)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here (else print it)")
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"--host {args.host!r} is not a loopback address; this generator only loads local servers")
    if args.clients < 1 or args.duration <= 0 or args.duration > 600:
        parser.error("need --clients >= 1 and 0 < --duration <= 600")
    bodies = [json.dumps(body).encode() for body in json.loads(args.queries.read_text())]
    summary = asyncio.run(drive(args, bodies))
    text = json.dumps(summary, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
