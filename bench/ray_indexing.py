"""Indexing on Ray: documents/s of ``rr index --engine ray`` against the local engine, same corpus, same run.

Run by hand (not in CI), about 5 minutes with the defaults on 2 cores::

    nice -n 5 python bench/ray_indexing.py --json ray_indexing.json
    python bench/ray_indexing.py --docs 200 --repeats 1                         # a quick look

Both engines index the first ``--docs`` documents of ``--collection`` into a
new expert with the bundled MiniLM (title + text, 256 tokens, BM25 included),
through ``app.offline.building.index_expert`` as ``rr index`` does; the Ray engine on
a local Ray started here (``ray.init(num_cpus=--cpus)``, not timed) with
``--actors`` encoder actors of one CPU and one torch thread each (default: one
per CPU). The local engine runs with the service's settings (torch threads:
1 on hosts with <= 2 cores, else torch's default). The Ray figure includes
starting the actors (each loads the encoder): that is part of every job.
Runs alternate (local, ray, then ray, local, ...) and the fastest of each is
compared. The two indexes are checked identical (ids per row, vectors to 1e-5).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import LoadMeter, argument_parser, other_heavy_processes, table, write_json  # noqa: E402


def write_slice(source: Path, target: Path, docs: int) -> Path:
    with open(source, encoding="utf-8") as reader, open(target, "w", encoding="utf-8") as writer:
        for number, line in enumerate(reader):
            if number >= docs:
                break
            writer.write(line)
    return target


def rows(directory: Path):
    import faiss

    from index import DENSE_FILE, Collection

    with Collection.open(directory) as collection:
        row_ids = collection.docstore.all_row_ids()
        ids = [doc.id for doc in collection.docstore.get(row_ids.tolist())]
    return ids, faiss.read_index(str(directory / DENSE_FILE)).reconstruct_batch(row_ids)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs given to the local Ray")
    parser.add_argument("--actors", type=int, default=None, help="encoder actors (default: one per CPU)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import ray

    from app.engine.loading import open_encoder
    from app.offline.building import index_expert
    from app.offline.ray_encoders import RayIndexing
    from app.settings import Settings
    from experts import create_expert
    from index.build.ray_data import RayEngine

    busy = other_heavy_processes()
    work = Path(tempfile.mkdtemp(prefix="rr-bench-ray-"))
    corpus = write_slice(args.datasets / args.collection / "corpus.jsonl", work / "corpus.jsonl", args.docs)
    settings = Settings(data_dir=work / "experts")
    encoder = open_encoder(settings)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    engine = RayEngine(actors=args.actors)
    timings: dict[str, list[float]] = {"local": [], "ray": []}
    built: dict[str, Path] = {}
    readings = []
    for repeat in range(args.repeats):
        for kind in ("local", "ray") if repeat % 2 == 0 else ("ray", "local"):
            expert = create_expert(settings.data_dir, f"{kind}{repeat}", encoder=encoder)
            meter = LoadMeter()
            started = time.perf_counter()
            manifest, report = index_expert(
                expert,
                encoder,
                [corpus],
                progress=False,
                ray=RayIndexing(settings, engine) if kind == "ray" else None,
            )
            timings[kind].append(time.perf_counter() - started)
            readings.append(f"{kind} run {repeat + 1}: {meter.stop().line()}")
            built[kind] = expert.path / manifest.index.directory
            print(f"{kind} run {repeat + 1}: {report.documents} docs in {timings[kind][-1]:.1f}s", flush=True)
    actors = engine.pool_size(ray.cluster_resources())
    ray.shutdown()

    local_ids, local_vectors = rows(built["local"])
    ray_ids, ray_vectors = rows(built["ray"])
    identical = local_ids == ray_ids and bool(np.allclose(local_vectors, ray_vectors, atol=1e-5))
    rate = {kind: args.docs / min(seconds) for kind, seconds in timings.items()}
    print(
        table(
            ["engine", "docs", "best s", "docs/s", "ratio to local"],
            [
                ["local", args.docs, f"{min(timings['local']):.1f}", f"{rate['local']:.1f}", "1.00"],
                [
                    f"ray ({actors} actors)",
                    args.docs,
                    f"{min(timings['ray']):.1f}",
                    f"{rate['ray']:.1f}",
                    f"{rate['ray'] / rate['local']:.2f}",
                ],
            ],
        )
    )
    print(f"identical indexes: {identical}; other heavy processes at start: {busy or 'none'}")
    for line in readings:
        print("  " + line)
    write_json(
        args.json,
        {
            "collection": args.collection,
            "docs": args.docs,
            "cpus": args.cpus,
            "actors": actors,
            "seconds": timings,
            "docs_per_s": rate,
            "ratio": rate["ray"] / rate["local"],
            "identical": identical,
            "load": readings,
            "others_at_start": busy,
        },
    )


if __name__ == "__main__":
    main()
