"""RR_ENCODER_BACKEND: validated by the settings, passed by open_encoder to the Encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.engine.loading import open_encoder
from app.settings import Settings
from experts import BACKENDS
from experts.quantization import is_quantized


def test_backend_defaults_to_torch_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RR_ENCODER_BACKEND", raising=False)
    assert Settings().encoder_backend == "torch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_encoder_backend_is_a_valid_setting(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setenv("RR_ENCODER_BACKEND", backend)
    assert Settings().encoder_backend == backend


def test_an_unknown_backend_is_refused_naming_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RR_ENCODER_BACKEND", "onnx")
    with pytest.raises(ValidationError, match="'torch', 'int8' or 'int8-full'"):
        Settings()


def test_open_encoder_builds_the_backend_the_settings_name(tiny_bert_path: Path) -> None:
    encoder = open_encoder(Settings(base_model=str(tiny_bert_path), encoder_backend="int8-full", torch_threads=1))
    assert encoder.backend == "int8-full" and is_quantized(encoder.base_module)
    assert not is_quantized(open_encoder(Settings(base_model=str(tiny_bert_path), torch_threads=1)).base_module)


def test_the_setting_lists_exactly_the_encoder_backends() -> None:
    from typing import get_args

    assert get_args(Settings.model_fields["encoder_backend"].annotation) == BACKENDS
