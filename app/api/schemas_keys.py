"""Bodies of ``GET /admin/keys`` and ``POST /admin/keys/reload``: the keys in force, never their hashes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.keys import KeyRing, Scope


class KeyOut(BaseModel):
    name: str = Field(description="The key's name: what the access log and `rr_requests_by_key_total` show.")
    scopes: list[Scope]
    experts: list[str] | None = Field(description="The experts it may touch; null: every expert.")
    source: str = Field(description="Where it is configured: RR_ADMIN_KEY, RR_SEARCH_KEY or RR_KEYS_FILE.")


class KeyListOut(BaseModel):
    keys: list[KeyOut]
    keys_file: str | None = Field(description="RR_KEYS_FILE, or null when only the built-in keys are used.")
    open_access: bool = Field(
        description="True while neither RR_SEARCH_KEY nor RR_KEYS_FILE is set: search, embeddings and reads "
        "need no key."
    )

    @classmethod
    def of(cls, ring: KeyRing, keys_file: object) -> KeyListOut:
        return cls(
            keys=[KeyOut.model_validate(key.public()) for key in ring.keys],
            keys_file=None if keys_file is None else str(keys_file),
            open_access=ring.open_access,
        )
