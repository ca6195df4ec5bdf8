"""Shared fixtures for the index tests: a deterministic fake encoder and corpus writers.

Helpers are offered as fixtures, the pytest way; ``build_worker.py`` (run as a
plain script in a child process) loads this file by path for the same fake
encoder, so the killed build and the in-process builds embed identically.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DIM = 32


def fake_embed(passages: list[str], dim: int = DIM) -> np.ndarray:
    """Deterministic stand-in for an encoder: each passage -> a unit vector seeded by its hash; (n, dim)."""
    out = np.empty((len(passages), dim), dtype=np.float32)
    for i, passage in enumerate(passages):
        seed = int.from_bytes(hashlib.sha256(passage.encode("utf-8")).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(dim)
        out[i] = vector / np.linalg.norm(vector)
    return out


def unit_vectors(n: int, dim: int = DIM, *, seed: int = 0) -> np.ndarray:
    """Random L2-normalised vectors: (n, dim) float32."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(n: int, dim: int = DIM, *, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` centres (more like real embeddings than uniform noise): (n, dim)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = (centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_records(n: int, *, prefix: str = "d", start: int = 0) -> list[dict[str, Any]]:
    """``n`` valid BEIR corpus records with distinct ids and texts."""
    return [
        {"_id": f"{prefix}{i}", "title": f"Title {prefix}{i}" if i % 3 else "", "text": f"text of {prefix} number {i}"}
        for i in range(start, start + n)
    ]


def write_corpus(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    """Write a corpus: dicts become JSON lines, strings are written verbatim; gzip when ``.gz``."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def embed() -> Callable[[list[str]], np.ndarray]:
    return fake_embed


@pytest.fixture(name="unit_vectors")
def unit_vectors_fixture() -> Callable[..., np.ndarray]:
    return unit_vectors


@pytest.fixture(name="clustered_vectors")
def clustered_vectors_fixture() -> Callable[..., np.ndarray]:
    return clustered_vectors


@pytest.fixture(name="make_records")
def make_records_fixture() -> Callable[..., list[dict[str, Any]]]:
    return make_records


@pytest.fixture(name="write_corpus")
def write_corpus_fixture() -> Callable[[Path, Sequence[dict[str, Any] | str]], Path]:
    return write_corpus


def fake_split(passages: list[str], *, width: int = 40, overlap: int = 10) -> list[tuple[list[tuple[int, int]], int]]:
    """Deterministic stand-in for experts.make_split_fn: one "token" per character, windows of ``width``."""
    out = []
    for passage in passages:
        if len(passage) <= width:
            out.append(([(0, len(passage))], len(passage)))
            continue
        spans, start = [], 0
        while True:
            end = min(start + width, len(passage))
            spans.append((start, end))
            if end == len(passage):
                break
            start = end - overlap
        out.append((spans, len(passage)))
    return out


@pytest.fixture(name="split")
def split_fixture() -> Callable[[list[str]], list[tuple[list[tuple[int, int]], int]]]:
    return fake_split
