"""``rr add-domain``: a new domain in one step: create, index, pilots, train, publish, locally or to a service.

The build is :func:`app.offline.expert_training.train_expert` (its progress
bars, its staging and atomic swap); publishing then either adds the expert to
the local registry (a later ``rr serve`` on the same root serves it) or
uploads it as a tar.gz to a running service's ``POST /admin/experts``, which
works wherever that service keeps its data.

Everything that can be checked before the (minutes-long) build is checked
first: the files exist, queries come with their judgements, the name is free
(or ``replace``), and with a service: it answers, the key may publish, and it
does not serve that name already (or ``replace``).
"""

from __future__ import annotations

import logging
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.offline.expert_training import TrainingResult, train_expert
from app.offline.service_client import RemoteError, call_service
from app.publishing.archive import pack_expert
from app.publishing.registry import RegistryFile
from experts import Encoder, TrainConfig, check_expert_name

__all__ = ["DomainInputError", "DomainResult", "add_domain", "check_inputs", "check_service", "publish_to_service"]

logger = logging.getLogger(__name__)

#: Checks before the build are quick requests; the upload may take a while on a large expert.
_CHECK_TIMEOUT_S = 30.0
_UPLOAD_TIMEOUT_S = 1800.0


class DomainInputError(ValueError):
    """An input of ``rr add-domain`` is missing or inconsistent; the message says which and what to give."""


@dataclass(frozen=True)
class DomainResult:
    """What ``add_domain`` built, and where it was published."""

    training: TrainingResult
    #: Local publish: True when the registry file gained the expert, False when none exists yet (a first
    #: ``rr serve`` publishes every expert under the root). None with a service.
    registered: bool | None
    #: With a service: its answer to the publish (``GET /experts/{name}``'s shape).
    published: dict[str, Any] | None


def check_inputs(
    root: Path, name: str, *, corpora: Sequence[Path], queries: Path | None, qrels: Path | None, replace: bool
) -> None:
    """Refuse, before any work, a bad name, a missing file, queries without judgements or a name taken."""
    check_expert_name(name)
    if not corpora:
        raise DomainInputError("give the domain's documents with --corpus FILE (BEIR corpus .jsonl or .jsonl.gz)")
    if (queries is None) != (qrels is None):
        raise DomainInputError(
            "give both --queries and --qrels (labelled training, e.g. queries.jsonl and qrels/train.tsv), "
            "or neither (corpus-only training)"
        )
    for label, path in [*(("--corpus", c) for c in corpora), ("--queries", queries), ("--qrels", qrels)]:
        if path is not None and not Path(path).is_file():
            raise DomainInputError(f"{label} {path}: no such file")
    if (Path(root) / name).exists() and not replace:
        raise DomainInputError(
            f"expert {name!r} already exists at {Path(root) / name}; pass --replace to rebuild it "
            "(the current version keeps serving until the new one is complete)"
        )


def check_service(url: str, name: str, *, admin_key: str | None, replace: bool) -> None:
    """Before the build: the service answers, ``admin_key`` may publish, and the name is free there (or replace).

    Raises :class:`~app.offline.service_client.RemoteError` with the server's own message.
    """
    call_service(url, "GET", "/admin/keys", admin_key=admin_key, timeout=_CHECK_TIMEOUT_S)  # needs the admin scope
    try:
        call_service(
            url, "GET", f"/experts/{urllib.parse.quote(name, safe='')}", admin_key=admin_key, timeout=_CHECK_TIMEOUT_S
        )
    except RemoteError as exc:
        if exc.status in (401, 403, 404):  # not served there, or this key may not list it: the publish decides
            return
        raise
    if not replace:
        raise RemoteError(f"{url} already serves an expert {name!r}: pass --replace to swap in the new one", status=409)


def publish_to_service(directory: Path, url: str, *, admin_key: str | None, replace: bool) -> dict[str, Any]:
    """Upload the expert ``directory`` as a tar.gz to ``POST {url}/admin/experts``; returns the server's answer."""
    path = "/admin/experts" + ("?replace=true" if replace else "")
    with tempfile.TemporaryDirectory(prefix="rr-add-domain-") as work:
        archive = pack_expert(directory, Path(work) / f"{Path(directory).name}.tar.gz")
        with open(archive, "rb") as body:
            return call_service(
                url,
                "POST",
                path,
                admin_key=admin_key,
                body=body,
                content_type="application/gzip",
                timeout=_UPLOAD_TIMEOUT_S,
            )


def add_domain(
    root: Path,
    name: str,
    *,
    encoder: Callable[[], Encoder],
    corpora: Sequence[Path],
    queries: Path | None = None,
    qrels: Path | None = None,
    config: TrainConfig = TrainConfig(),
    replace: bool = False,
    url: str | None = None,
    admin_key: str | None = None,
    description: str = "",
    progress: bool = True,
    echo: Callable[[str], None] = lambda _: None,
) -> DomainResult:
    """Build the expert ``root/name`` from a corpus (and labelled queries) and publish it.

    ``encoder`` is called once the inputs (and the service) have been checked, so a mistake is reported
    before the model loads. Without ``url`` the expert joins the local registry; with it, the expert is
    uploaded to that service. A refused upload raises :class:`RemoteError` and leaves the built expert
    in place under ``root``.

    >>> add_domain(Path("data/experts"), "contracts", encoder=Encoder,
    ...            corpora=[Path("contracts.jsonl")], url="http://127.0.0.1:8000")  # doctest: +SKIP
    """
    corpora = [Path(c) for c in corpora]
    check_inputs(root, name, corpora=corpora, queries=queries, qrels=qrels, replace=replace)
    if url is not None:
        check_service(url, name, admin_key=admin_key, replace=replace)
    training = train_expert(
        root,
        name,
        encoder=encoder(),
        corpora=corpora,
        queries=queries,
        qrels=qrels,
        config=config,
        replace=replace,
        description=description,
        progress=progress,
    )
    if url is None:
        registry = RegistryFile(root)
        registry.include([name])
        return DomainResult(training=training, registered=registry.exists(), published=None)
    echo(f"publishing {name!r} to {url} ...")
    try:
        answer = publish_to_service(training.path, url, admin_key=admin_key, replace=replace)
    except RemoteError as exc:
        raise RemoteError(
            f"{exc}\nthe expert was built and stays at {training.path}; nothing changed on {url}", status=exc.status
        ) from None
    return DomainResult(training=training, registered=None, published=answer)
