"""One local Ray for the whole package (starting it takes seconds); Ray is a dev dependency, so no skip.

Also the experts the Serve tests serve: three small collections with random
adapters on the tiny BERT, built once per session; each test module copies
them to a data root of its own (the admin tests change what it publishes).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

AERO = [
    ("a1", "Wing lift", "lift and drag of swept wings at transonic speed"),
    ("a2", "Boundary layers", "laminar boundary layer transition on a flat plate"),
    ("a3", "Shock waves", "oblique shock reflection from a wall"),
]
COMPUTING = [
    ("a1", "Compilers", "a one-pass compiler for an algebraic language"),
    ("a2", "Sorting", "a comparison of sorting methods on tape"),
    ("a3", "Storage", "dynamic storage allocation with linked lists"),
]
MEDICINE = [
    ("m1", "Vitamin D", "vitamin D supplements and the risk of bone fractures"),
    ("m2", "Stem cells", "haematopoietic stem cells in the bone marrow"),
]


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """``ray.init`` on this machine: 2 CPUs, as in CI, no dashboard."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def make_expert(root: Path, name: str, docs: list[tuple[str, str, str]], encoder: object, adapter: Path) -> None:
    from app.offline.building import build_pilots, index_expert
    from experts import create_expert

    corpus = root.parent / f"{name}-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    expert = create_expert(root, name, encoder=encoder, adapter_from=adapter)
    index_expert(expert, encoder, [corpus], progress=False)
    build_pilots(expert, encoder, [f"{t} {x}" for _, t, x in docs])


@pytest.fixture(scope="session")
def serve_experts(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_path: Path, adapter_a: Path, adapter_b: Path
) -> Path:
    """A data root with three trained experts (aero, computing, medicine) and no registry file yet."""
    from experts import Encoder

    root = tmp_path_factory.mktemp("serve-experts") / "experts"
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder, adapter_a)
    make_expert(root, "computing", COMPUTING, encoder, adapter_b)
    make_expert(root, "medicine", MEDICINE, encoder, adapter_a)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
