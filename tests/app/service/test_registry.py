"""The registry file and restoring from it: what survives a restart, and what a broken file does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.engine import SearchEngine
from app.publishing.publisher import ExpertPublisher
from app.publishing.registry import RegistryEntry, RegistryError, RegistryFile
from experts import Encoder


def test_round_trip_and_a_missing_file(tmp_path: Path) -> None:
    registry = RegistryFile(tmp_path / "root")
    assert registry.read() is None and not registry.exists()
    registry.write([RegistryEntry(name="b", path="x/b", version=2), RegistryEntry(name="a", path="a")])
    assert [(e.name, e.path, e.version) for e in registry.read()] == [("a", "a", 0), ("b", "x/b", 2)]
    assert not [p for p in registry.root.iterdir() if p.name != "registry.json"]  # no temp files left


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{broken", "not valid"),
        ('{"experts": [{"name": "a", "path": "a"}, {"name": "a", "path": "b"}]}', "twice"),
        ('{"experts": [{"name": "Bad Name", "path": "a"}]}', "Invalid expert name"),
        ('{"format_version": 99, "experts": []}', "format 99"),
    ],
)
def test_an_unreadable_registry_is_an_error_never_replaced(tmp_path: Path, content: str, says: str) -> None:
    (tmp_path / "registry.json").write_text(content)
    with pytest.raises(RegistryError, match=says):
        RegistryFile(tmp_path).read()
    assert (tmp_path / "registry.json").read_text() == content


def test_restore_loads_the_listed_experts_and_marks_the_rest_failed(
    experts_root: Path, tiny_bert_path: Path, tmp_path: Path
) -> None:
    RegistryFile(experts_root).write(
        [
            RegistryEntry(name="alpha", path="alpha"),
            RegistryEntry(name="gamma", path="staging/gamma"),
            RegistryEntry(name="ghost", path="ghost"),
            RegistryEntry(name="beta", path="../elsewhere/beta"),
        ]
    )
    engine = SearchEngine(Encoder(tiny_bert_path, max_length=64))
    publisher = ExpertPublisher(engine, experts_root)
    publisher.restore()
    assert sorted(engine.experts) == ["alpha", "gamma"]
    assert set(publisher.failed) == {"ghost", "beta"} and "outside the data root" in publisher.failed["beta"]
    assert sorted(publisher.entries) == ["alpha", "beta", "gamma", "ghost"]  # still published: fix or delete them
    publisher.remove("ghost").wait(5)
    assert [e["name"] for e in json.loads((experts_root / "registry.json").read_text())["experts"]] == [
        "alpha",
        "beta",
        "gamma",
    ]
    engine.close()


def test_a_fresh_root_publishes_what_loads_and_writes_the_registry(experts_root: Path, tiny_bert_path: Path) -> None:
    (experts_root / "registry.json").unlink()
    (experts_root / "half").mkdir()
    (experts_root / "half" / "manifest.json").write_text("{}")  # a broken directory is skipped, not published
    engine = SearchEngine(Encoder(tiny_bert_path, max_length=64))
    publisher = ExpertPublisher(engine, experts_root)
    publisher.restore()
    assert (
        sorted(engine.experts) == ["alpha", "beta"] and publisher.failed == {} and "half" in engine.failures.unavailable
    )
    assert [(e.name, e.version) for e in RegistryFile(experts_root).read()] == [("alpha", 3), ("beta", 3)]
    engine.close()


def test_include_adds_names_to_an_existing_file_only(tmp_path: Path) -> None:
    registry = RegistryFile(tmp_path)
    assert registry.include(["cacm"]) == [] and not registry.exists()  # never written: a first start publishes all
    registry.write([RegistryEntry(name="cisi", path="cisi", version=2)])
    assert registry.include(["cisi", "cacm"]) == ["cacm"]
    assert [(e.name, e.path, e.version) for e in registry.read() or []] == [("cacm", "cacm", 0), ("cisi", "cisi", 2)]


def test_a_packed_expert_unpacks_to_the_same_files(template_root: Path, tmp_path: Path) -> None:
    from app.publishing.archive import extract_archive, find_expert_root, pack_expert

    source = template_root / "alpha"
    archive = pack_expert(source, tmp_path / "alpha.tar.gz")
    staging = tmp_path / "staging"
    staging.mkdir()
    extract_archive(archive, staging, max_bytes=1 << 30)
    unpacked = find_expert_root(staging)

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        }

    assert unpacked.name == "alpha" and files(unpacked) == files(source) and files(source)
    assert not any(p.name.startswith(".") for p in unpacked.rglob("*"))  # locks and work files stay out
