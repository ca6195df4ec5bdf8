from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experts import (
    MANIFEST_FILE,
    AdapterMismatchError,
    ChecksumMismatchError,
    Encoder,
    ExpertDir,
    ExpertDirError,
    MissingFileError,
    PilotsSection,
    check_base_matches,
    create_expert,
    list_expert_dirs,
)


def test_new_expert_has_a_complete_manifest_and_an_identity_adapter(encoder: Encoder, tmp_path: Path) -> None:
    expert = create_expert(tmp_path, "cranfield", encoder=encoder, description="aeronautics")
    manifest = expert.read_manifest()
    assert manifest.name == "cranfield" and manifest.version == 1
    assert manifest.base_model.fingerprint == encoder.fingerprint and manifest.base_model.dim == 32
    assert manifest.adapter.side == "query" and manifest.adapter.trained is False
    assert manifest.adapter.rank == 8 and "query" in manifest.adapter.target_modules
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(manifest.files)
    expert.verify(manifest)
    check_base_matches(manifest, encoder)

    encoder.add_adapter("cranfield", expert.adapter_path)
    texts = ["shock wave", "lift and drag of a wing"]
    np.testing.assert_allclose(encoder.embed(texts, expert="cranfield"), encoder.embed(texts), atol=1e-6)
    assert list_expert_dirs(tmp_path) == [expert]  # no staging directory left behind
    assert [p.name for p in tmp_path.iterdir()] == ["cranfield"]


def test_manifest_round_trips(encoder: Encoder, tmp_path: Path) -> None:
    expert = create_expert(tmp_path, "cacm", encoder=encoder)
    manifest = expert.read_manifest()
    assert ExpertDir(expert.path).read_manifest() == manifest
    assert json.loads((expert.path / MANIFEST_FILE).read_text())["name"] == "cacm"


def test_a_plain_peft_adapter_is_copied_in(encoder: Encoder, adapter_a: Path, tmp_path: Path) -> None:
    expert = create_expert(tmp_path, "npl", encoder=encoder, adapter_from=adapter_a)
    manifest = expert.read_manifest()
    assert manifest.adapter.trained is True and manifest.adapter.rank == 4
    encoder.add_adapter("npl", expert.adapter_path)
    reference = Encoder(encoder.model_id, max_length=64)
    reference.add_adapter("direct", adapter_a)
    np.testing.assert_allclose(
        encoder.embed(["x y"], expert="npl"), reference.embed(["x y"], expert="direct"), atol=1e-6
    )


def test_adapter_for_another_base_is_refused_and_nothing_is_left(
    encoder: Encoder, foreign_adapter: Path, tmp_path: Path
) -> None:
    with pytest.raises(AdapterMismatchError, match="size 48"):
        create_expert(tmp_path, "law", encoder=encoder, adapter_from=foreign_adapter)
    assert list(tmp_path.iterdir()) == []


def test_expert_built_on_another_base_is_refused(encoder: Encoder, other_bert_path: Path, tmp_path: Path) -> None:
    manifest = create_expert(tmp_path, "cisi", encoder=Encoder(other_bert_path)).read_manifest()
    with pytest.raises(AdapterMismatchError, match=r"built for base model .*\(dim 48.*the base encoder is .*\(dim 32"):
        check_base_matches(manifest, encoder)


def test_changed_file_fails_its_checksum_and_a_missing_one_is_named(encoder: Encoder, tmp_path: Path) -> None:
    expert = create_expert(tmp_path, "scifact", encoder=encoder)
    manifest = expert.read_manifest()
    weights = expert.adapter_path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="adapter/adapter_model.safetensors does not match its checksum"):
        expert.verify(manifest)
    expert.verify(manifest, checksums=False)  # presence-only check still passes
    weights.unlink()
    with pytest.raises(
        MissingFileError, match="adapter/adapter_model.safetensors is listed in the manifest but missing"
    ):
        expert.verify(manifest, checksums=False)


def test_missing_or_invalid_manifest(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="manifest.json is missing"):
        ExpertDir(tmp_path).read_manifest()
    (tmp_path / MANIFEST_FILE).write_text('{"name": "Bad Name!"}')
    with pytest.raises(ExpertDirError, match="not a valid manifest"):
        ExpertDir(tmp_path).read_manifest()


@pytest.mark.parametrize("name", ["", "UPPER", "-lead", "has space", "x" * 65, "../up"])
def test_invalid_names_are_refused(encoder: Encoder, tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="Invalid expert name"):
        create_expert(tmp_path, name, encoder=encoder)


def test_existing_expert_is_not_overwritten(encoder: Encoder, tmp_path: Path) -> None:
    create_expert(tmp_path, "cacm", encoder=encoder)
    with pytest.raises(ExpertDirError, match="already exists"):
        create_expert(tmp_path, "cacm", encoder=encoder)


def test_publish_bumps_the_version_checksums_new_files_and_drops_stale_ones(encoder: Encoder, tmp_path: Path) -> None:
    expert = create_expert(tmp_path, "cacm", encoder=encoder)
    manifest = expert.read_manifest()
    published = []
    for seed in range(3):
        pilots = np.random.default_rng(seed).normal(size=(2, 32)).astype(np.float32)
        name = expert.stage_pilots(pilots)
        manifest = expert.publish(pilots=PilotsSection(file=name, count=2, method="centroid"))
        published.append(name)
        np.testing.assert_array_equal(expert.read_pilots(manifest), pilots)
    assert manifest.version == 4 and manifest.pilots.file in manifest.files
    expert.verify(manifest)
    on_disk = sorted(p.name for p in expert.path.glob("pilots-*.npy"))
    assert on_disk == sorted(published[-2:])  # current and previous kept for in-flight readers
    assert expert.read_manifest() == manifest
