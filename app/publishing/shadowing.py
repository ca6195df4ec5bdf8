"""Starting a shadow: a candidate version of a published expert, validated as a replace would validate it.

The candidate is named by a path under the data root, checked and loaded by the same steps as a replace
(manifest, checksums, base-model fingerprint, dimension, pilots, index, adapter), but read-only: a shadow
never takes the candidate's live log. A bad candidate is refused with the loader's error and nothing
changes. The shadow itself runs in the engine (:mod:`app.engine.shadow`); a replace, rollback or removal
of the expert ends it there. Nothing of a shadow is written down: a restart ends it.

>>> start_shadow(publisher, "cacm", "v2/cacm", share=0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math

from app.engine.loading import LOAD_ERRORS, load_expert, unload_expert
from app.engine.shadow import SHADOW_SEED, ShadowReport
from app.errors import ExpertRejectedError, InvalidRequestError
from app.publishing.publisher import ExpertPublisher
from experts import ExpertDir, UnknownExpertError

logger = logging.getLogger(__name__)


def start_shadow(
    publisher: ExpertPublisher, name: str, path: str, *, share: float, seed: int = SHADOW_SEED
) -> ShadowReport:
    """Load the expert directory at ``path`` beside the serving ``name`` and shadow it with ``share`` of its queries.

    403 outside the data root, 404 for an expert not serving, 409 when it is shadowed already, 422 for a
    share out of (0, 1] or a candidate that fails validation (the loader's error) or holds another expert.
    """
    if not 0.0 < share <= 1.0 or math.isnan(share):
        raise InvalidRequestError(
            f"share must be above 0 and at most 1 (the part of the queries shadowed), got {share}"
        )
    directory = publisher.resolve_path(path)
    engine = publisher.engine
    with publisher.admin_lock:
        serving = engine.experts.get(name)
        if serving is None:
            publisher.check_servable(name)  # published but failed: 503 with why
            raise UnknownExpertError(f"Expert {name!r} not found. Published experts: {sorted(engine.experts)}")
        engine.shadows.check_free(name)  # before the (slow) load
        try:
            found = ExpertDir(directory).read_manifest().name
        except LOAD_ERRORS as exc:
            raise ExpertRejectedError(f"expert at {path!r} cannot shadow {name!r}: {exc}") from exc
        if found != name:
            raise ExpertRejectedError(f"the directory at {path!r} holds expert {found!r}, not {name!r}")
        if directory == serving.directory.path.resolve():
            raise ExpertRejectedError(
                f"{path!r} is the directory expert {name!r} serves from: a shadow compares another version with it"
            )
        try:
            candidate = load_expert(directory, engine.encoder, verify_checksums=True, write=False)
        except LOAD_ERRORS as exc:
            raise ExpertRejectedError(
                f"expert {name!r} at {path!r} cannot shadow the serving version: {exc}",
                details={"reason": type(exc).__name__},
            ) from exc
        relative = directory.relative_to(publisher.root).as_posix()
        try:
            shadow = engine.shadows.start(candidate, serving=serving, path=relative, share=share, seed=seed)
        except BaseException:
            unload_expert(candidate, engine.encoder)
            raise
    return shadow.report()
