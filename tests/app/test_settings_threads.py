"""RR_BLAS_THREADS: numpy's BLAS threads, capped by open_encoder like torch's and FAISS's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from threadpoolctl import threadpool_info, threadpool_limits

from app.engine.loading import open_encoder
from app.settings import Settings


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (8, None)])
def test_blas_threads_default_to_one_on_small_hosts(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int | None
) -> None:
    monkeypatch.delenv("RR_BLAS_THREADS", raising=False)
    monkeypatch.setattr("app.settings.os.cpu_count", lambda: cores)
    assert Settings().blas_threads == expected


def test_blas_threads_below_one_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RR_BLAS_THREADS", "0")
    with pytest.raises(ValidationError, match="blas_threads"):
        Settings()


def test_open_encoder_caps_the_blas_threads_numpy_uses(tiny_bert_path: Path) -> None:
    with threadpool_limits(limits=2, user_api="blas"):  # restores the process's own limits on exit
        open_encoder(Settings(base_model=str(tiny_bert_path), torch_threads=1, blas_threads=1))
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
