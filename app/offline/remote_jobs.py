"""``rr add-domain --url URL --on-server``: the build runs as a job on the service, from files on its data root.

Nothing is built locally: the command asks the service to train the expert
(``POST /admin/jobs``, kind ``train``) from a corpus it already holds, or,
with ``--upload``, from local files it first sends (``POST /admin/uploads``,
:func:`upload_file`); then it follows the job (``GET /admin/jobs/{id}``),
saying each phase and its progress, until it ends. Ctrl-C cancels the job on
the service.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.offline.service_client import RemoteError, call_service

__all__ = ["run_remote_train_job", "upload_file"]

_REQUEST_TIMEOUT_S = 30.0
#: An upload streams the whole file: give a slow link time.
_UPLOAD_TIMEOUT_S = 3600.0
_FINISHED = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


def run_remote_train_job(
    url: str,
    name: str,
    *,
    corpus: str,
    queries: str | None = None,
    qrels: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    replace: bool = False,
    admin_key: str | None,
    echo: Callable[[str], None] = lambda _: None,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Train ``name`` on the service at ``url`` from files under its data root; return the finished job record.

    Raises :class:`RemoteError` when the service refuses the job (its own message: a path outside its data
    root, a missing file, the expert busy) or when the job does not succeed (its error and last log lines).

    >>> run_remote_train_job("http://127.0.0.1:8000", "contracts", corpus="incoming/contracts.jsonl",
    ...                      admin_key="...", echo=print)["published_version"]  # doctest: +SKIP
    1
    """
    body: dict[str, Any] = {"kind": "train", "expert": name, "corpus": corpus, "replace": replace}
    extra = {"queries": queries, "qrels": qrels, "steps": steps, "batch_size": batch_size}
    body.update({key: value for key, value in extra.items() if value is not None})
    job = _call(url, "POST", "/admin/jobs", admin_key, json.dumps(body).encode())
    echo(f"job {job['id']} queued on {url}: train {name!r} from {corpus} on the server")
    path = f"/admin/jobs/{urllib.parse.quote(job['id'], safe='')}"
    said = ""
    try:
        while job["state"] not in _FINISHED:
            time.sleep(poll_s)
            job = _call(url, "GET", path, admin_key)
            line = _progress_line(job)
            if line != said:
                echo(line)
                said = line
    except KeyboardInterrupt:
        _call(url, "DELETE", path, admin_key)
        echo(f"cancelling job {job['id']} on {url} (it stops at its next batch or step)")
        raise
    if job["state"] != "succeeded":
        tail = "\n".join(f"  {line}" for line in job["log_tail"][-5:])
        raise RemoteError(f"job {job['id']} {job['state']}: {job.get('error') or 'no error given'}\n{tail}")
    return job


def upload_file(url: str, path: Path, *, admin_key: str | None) -> dict[str, Any]:
    """Send the local file ``path`` to the service (``POST /admin/uploads``), streamed from disk.

    Returns the service's answer: ``path`` (to name in a job, relative to its data root), ``bytes``, ``sha256``.
    The name sent is the file's own, with characters the service does not take replaced by ``_``.

    >>> upload_file("http://127.0.0.1:8000", Path("corpus.jsonl.gz"), admin_key="...")["path"]  # doctest: +SKIP
    '.uploads/u20261205T150400Z-1a2b3c-corpus.jsonl.gz'
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip(".-")[-128:] or "upload"
    query = urllib.parse.urlencode({"name": name})
    with open(path, "rb") as body:
        return call_service(
            url,
            "POST",
            f"/admin/uploads?{query}",
            admin_key=admin_key,
            body=body,
            content_type="application/octet-stream",
            timeout=_UPLOAD_TIMEOUT_S,
        )


def _progress_line(job: dict[str, Any]) -> str:
    progress = job["progress"]
    line = f"[{job['state']}] {progress['phase']}"
    if progress.get("total"):
        line += f": {progress['done']}/{progress['total']} {progress.get('unit') or ''}".rstrip()
        if progress.get("eta_s") is not None:
            line += f", about {progress['eta_s']:.0f}s left"
    return line


def _call(url: str, method: str, path: str, admin_key: str | None, body: bytes | None = None) -> dict[str, Any]:
    return call_service(url, method, path, admin_key=admin_key, body=body, timeout=_REQUEST_TIMEOUT_S)
