from __future__ import annotations

from pathlib import Path

import pytest

from experts import Encoder


@pytest.fixture()
def encoder(tiny_bert_path: Path) -> Encoder:
    return Encoder(tiny_bert_path, max_length=64, batch_size=4)
