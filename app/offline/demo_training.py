"""The demo's second pass: each demo expert, serving with its untrained adapter, trained and swapped in live.

Why not ``train_expert(replace=True)`` on ``<root>/<name>``: that exchanges the directory the service has
loaded (its document store and live log are opened by path), behind the publisher's back. So the trained
version is assembled in a new directory the service owns, ``<root>/uploads/<name>-trained-<stamp>/<name>``
(as an unpacked upload is), reusing the serving version's index (hard links, nothing embedded again), and
published by the publisher's replace: validated and loaded completely, then the registry, then the snapshot
swap, so searches see the untrained version or the trained one and never half of either. The untrained
directory becomes a kept version (a rollback serves it again); kept versions beyond RR_KEEP_VERSIONS are
pruned as for any replace. A trained version that is never published (a failure, a shutdown, a crash) is
deleted: at once here, or by the next start-up, which removes every upload no registry entry names.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from app.offline.expert_training import train_expert
from app.publishing.registry import RegistryFile
from app.publishing.versions import UPLOADS_DIR
from app.settings import Settings
from experts import Encoder, ExpertDir, ExpertError, Manifest, TrainConfig

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """The service is shutting down: the training in progress ends at its next step and nothing is published."""


def demo_corpus(collection: Path, work: Path, max_docs: int | None) -> Path:
    """The corpus file the demo indexes for ``collection``: the whole one, or a file of its first ``max_docs``."""
    corpus = collection / "corpus.jsonl"
    if max_docs is None:
        return corpus
    sliced = work / f"corpus-first-{max_docs}.jsonl"
    if not sliced.exists():
        with open(corpus, encoding="utf-8") as source, open(sliced, "w", encoding="utf-8") as target:
            target.writelines(itertools.islice(source, max_docs))
    return sliced


def serving_directory(settings: Settings, name: str) -> Path:
    """The directory the service serves ``name`` from: its registry entry's, else ``<root>/<name>``."""
    registry = RegistryFile(settings.data_dir)
    for entry in registry.read() or []:
        if entry.name == name:
            return registry.resolve(entry)
    return settings.data_dir / name


def _serving_manifest(settings: Settings, name: str) -> Manifest | None:
    try:
        return ExpertDir(serving_directory(settings, name)).read_manifest()
    except (ExpertError, OSError):
        return None


def untrained_experts(settings: Settings, datasets: Path, collections: Sequence[str]) -> list[str]:
    """The demo experts whose serving version is not trained (or not built yet), smallest corpus first.

    Those already trained (a later run) are left alone; so are those whose collection is absent.
    """
    todo = [
        name
        for name in collections
        if (datasets / name / "corpus.jsonl").is_file()
        and not ((manifest := _serving_manifest(settings, name)) is not None and manifest.adapter.trained)
    ]
    return sorted(todo, key=lambda name: (datasets / name / "corpus.jsonl").stat().st_size)


def _train_one(
    settings: Settings,
    encoder: Encoder,
    collection: Path,
    serving: Path,
    manifest: Manifest,
    *,
    max_docs: int | None,
    config: TrainConfig,
    swap_in: Callable[[Path], None],
    stage: Callable[[str], None],
    stopping: Callable[[], bool],
) -> int:
    """Train ``collection``'s expert in a new owned directory and swap it in; returns the version now serving."""
    name = collection.name
    assert manifest.index is not None  # only complete experts are trained
    corpus = demo_corpus(collection, ExpertDir(settings.data_dir / name).work_path("demo"), max_docs)
    train_qrels = collection / "qrels" / "train.tsv"
    labelled = train_qrels.is_file()  # scifact's train split; the others are trained corpus-only

    def step(done: int, total: int) -> None:
        if stopping():
            raise TrainingStopped(f"training {name!r} stopped at step {done}/{total}: the server is shutting down")
        if done == total or done % max(1, total // 100) == 0:
            stage(f"training: step {done}/{total}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = settings.data_dir / UPLOADS_DIR / f"{name}-trained-{stamp}-{secrets.token_hex(3)}"
    root.mkdir(parents=True)
    try:
        stage(f"training: step 0/{config.steps}")
        result = train_expert(
            root,
            name,
            encoder=encoder,
            corpora=[corpus],
            queries=collection / "queries.jsonl" if labelled else None,
            qrels=train_qrels if labelled else None,
            config=config,
            factory=manifest.index.factory,
            description=manifest.description,
            keep_versions=1,  # nothing is replaced in this new root: the service keeps the untrained version
            progress=False,
            retrains=serving,
            on_step=step,
        )
        stage("publishing the trained version")
        swap_in(result.path)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return result.manifest.version


def train_beside_service(
    settings: Settings,
    encoder: Encoder,
    datasets: Path,
    names: Iterable[str],
    *,
    max_docs: int | None,
    config: TrainConfig,
    swap_in: Callable[[Path], None],
    progress: Callable[[str, str | None], None],
    stopping: Callable[[], bool],
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Train the serving experts ``names`` one after another, swapping each trained version in as it is done.

    ``swap_in(directory)`` publishes a trained version with the publisher's replace. ``progress(name, doing)``
    says ``training: step n/N``, then None once the trained version serves; a failure leaves the untrained
    version serving and says ``training failed: <why>``. An expert not complete (its build failed) or already
    trained is skipped. ``names`` may be an iterator that waits for the next one (``rr demo`` feeds it each
    expert as it is published, from :func:`~app.offline.demo.build_beside_service`). Returns the experts trained.
    """
    trained = []
    for name in names:
        if stopping():
            break
        manifest = _serving_manifest(settings, name)
        if manifest is None or manifest.index is None or manifest.pilots is None:
            continue  # not built: its build says why
        if manifest.adapter.trained:
            progress(name, None)
            continue
        started = time.perf_counter()

        def stage(doing: str, name: str = name) -> None:
            progress(name, doing)

        try:
            version = _train_one(
                settings,
                encoder,
                datasets / name,
                serving_directory(settings, name),
                manifest,
                max_docs=max_docs,
                config=config,
                swap_in=swap_in,
                stage=stage,
                stopping=stopping,
            )
        except TrainingStopped as exc:
            logger.info("%s", exc)
            break
        except Exception as exc:  # the untrained version keeps serving; the others are still trained
            logger.exception("training the demo expert %s failed; its untrained version keeps serving", name)
            progress(name, f"training failed (the untrained version serves): {exc}")
            continue
        progress(name, None)
        trained.append(name)
        echo(f"[{name}] trained version {version} serving now (trained in {time.perf_counter() - started:.0f}s)")
    return trained
