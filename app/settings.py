"""Configuration, read once from ``RR_*`` environment variables (pydantic-settings).

Built by the CLI (or the app factory) and passed down; nothing deeper in the
code reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service and the CLI. Example: ``RR_DATA_DIR=/srv/experts rr search "..."``."""

    model_config = SettingsConfigDict(env_prefix="RR_", extra="ignore")

    data_dir: Path = Field(Path("data/experts"), description="Root holding one directory per expert.")
    base_model: str | None = Field(
        None, description="Hugging Face id or local path of the base encoder; unset = bundled all-MiniLM-L6-v2."
    )
    max_length: int = Field(256, ge=8, description="Token limit for documents.")
    query_max_length: int = Field(64, ge=8, description="Token limit for queries.")
    batch_size: int = Field(64, ge=1, description="Rows per forward pass.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; unset = torch's default.")
    verify_checksums: bool = Field(True, description="Hash every file of an expert when loading it.")
    router_aggregate: Literal["max", "mean"] = Field(
        "max", description="Expert score from its pilots: nearest pilot (max) or mean similarity."
    )
    datasets_dir: Path = Field(Path("../shared/datasets"), description="BEIR collections used by the demo.")
