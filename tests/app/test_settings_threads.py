"""RR_BLAS_THREADS (numpy's BLAS threads, capped by open_encoder like torch's and FAISS's), RR_TORCH_THREADS (a count
or auto) and RR_SEARCH_BATCHES_IN_FLIGHT."""

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


@pytest.mark.parametrize(("cores", "expected"), [(1, "auto"), (2, "auto"), (8, None)])
def test_torch_threads_are_chosen_per_pass_on_small_hosts(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: str | None
) -> None:
    monkeypatch.delenv("RR_TORCH_THREADS", raising=False)
    monkeypatch.setattr("app.settings.os.cpu_count", lambda: cores)
    assert Settings().torch_threads == expected


def test_a_container_s_cpu_quota_makes_a_small_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RR_TORCH_THREADS", "RR_BLAS_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("app.settings.os.cpu_count", lambda: 16)
    monkeypatch.setattr("app.settings.cpu_quota", lambda: 2.0)  # docker run --cpus 2 on a 16-core host
    assert Settings().torch_threads == "auto" and Settings().blas_threads == 1
    monkeypatch.setattr("app.settings.cpu_quota", lambda: None)
    assert Settings().torch_threads is None and Settings().blas_threads is None


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("2", 2), ("1", 1)])
def test_torch_threads_read_a_count_or_auto(monkeypatch: pytest.MonkeyPatch, value: str, expected: object) -> None:
    monkeypatch.setenv("RR_TORCH_THREADS", value)
    assert Settings().torch_threads == expected


@pytest.mark.parametrize("value", ["0", "two"])
def test_torch_threads_other_than_a_count_or_auto_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RR_TORCH_THREADS", value)
    with pytest.raises(ValidationError, match="torch_threads"):
        Settings()


def test_open_encoder_with_auto_threads_chooses_per_pass(tiny_bert_path: Path) -> None:
    assert open_encoder(Settings(base_model=str(tiny_bert_path), torch_threads="auto")).thread_choice is not None
    assert open_encoder(Settings(base_model=str(tiny_bert_path), torch_threads=1)).thread_choice is None


@pytest.mark.parametrize("field", ["blas_threads", "search_batches_in_flight"])
def test_thread_counts_below_one_are_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    monkeypatch.setenv(f"RR_{field.upper()}", "0")
    with pytest.raises(ValidationError, match=rf"{field}\n  Input should be greater than or equal to 1"):
        Settings()


def test_open_encoder_caps_the_blas_threads_numpy_uses(tiny_bert_path: Path) -> None:
    with threadpool_limits(limits=2, user_api="blas"):  # restores the process's own limits on exit
        open_encoder(Settings(base_model=str(tiny_bert_path), torch_threads=1, blas_threads=1))
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
