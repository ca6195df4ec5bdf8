"""API keys with scopes: the key file (``RR_KEYS_FILE``), the two built-in keys, lookup, and reload.

A key has a name (shown in the access log and the metrics, never its secret),
scopes, and optionally the experts it may touch. Keys come from two places:

- ``RR_ADMIN_KEY`` is the built-in key ``admin`` (every scope, every expert),
  ``RR_SEARCH_KEY`` the built-in key ``search`` (``search``, ``embed``,
  ``documents:read``), exactly as before there was a key file;
- ``RR_KEYS_FILE``, a TOML file that stores each key as the SHA-256 of its
  secret (``rr keys hash`` prints it), so the server never holds a secret::

    [[keys]]
    name = "ci-reader"
    hash = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    scopes = ["search", "documents:read"]
    experts = ["cranfield"]          # optional; left out = every expert

A presented key is hashed once and compared with every key's hash, each with
``hmac.compare_digest`` and without stopping at a match, so neither which key
matched nor how far a guess got shows in the timing. :class:`KeyStore` holds the
current :class:`KeyRing`; a reload builds a whole new ring and swaps the one
reference, and a file that fails to load leaves the ring in force untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from app.errors import KeyFileError
from app.settings import Settings
from experts import check_expert_name

logger = logging.getLogger(__name__)

Scope = Literal["admin", "documents:read", "documents:write", "embed", "search"]
#: Every scope, sorted (the order messages list them in).
SCOPES: tuple[Scope, ...] = ("admin", "documents:read", "documents:write", "embed", "search")
#: The scopes of ``RR_SEARCH_KEY``, and what anyone may do when no search key and no key file are set.
SEARCH_SCOPES: frozenset[Scope] = frozenset({"search", "embed", "documents:read"})
#: Names no file key may take: the built-in keys, and the labels of callers without a key.
ANONYMOUS, UNKNOWN = "anonymous", "unknown"
RESERVED_NAMES = frozenset({"admin", "search", ANONYMOUS, UNKNOWN})
HASH_PREFIX = "sha256:"
#: Where the auth dependencies leave the caller's key name: ``request.state.<this>``, i.e. the ASGI scope's
#: ``state`` dict, read by the metrics middleware and the access log.
KEY_NAME_STATE = "rr_key"
#: A key name is a log token and a metric label: short, no spaces or quotes.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HASH = re.compile(r"^sha256:[0-9a-fA-F]{64}$")
_FIELDS = ("experts", "hash", "name", "scopes")
_ENTRY_HEADER = re.compile(r"^\s*\[\[\s*keys\s*\]\]")


def hash_secret(secret: str) -> str:
    """What the key file stores for ``secret``: ``sha256:<hex>`` (``rr keys hash`` prints it).

    >>> hash_secret("foo")
    'sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae'
    """
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class ApiKey:
    """One key: its name, the SHA-256 of its secret, its scopes and the experts it may touch (None: all)."""

    name: str
    digest: bytes = field(repr=False)
    scopes: frozenset[Scope]
    experts: frozenset[str] | None = None
    #: Where it was configured: ``RR_ADMIN_KEY``, ``RR_SEARCH_KEY`` or ``RR_KEYS_FILE``.
    source: str = "RR_KEYS_FILE"

    def public(self) -> dict[str, Any]:
        """What ``GET /admin/keys`` shows: everything but the hash."""
        experts = None if self.experts is None else sorted(self.experts)
        return {"name": self.name, "scopes": sorted(self.scopes), "experts": experts, "source": self.source}


@dataclass(frozen=True)
class KeyRing:
    """The keys in force. ``open_access``: no search key and no key file, so search-side scopes need no key."""

    keys: tuple[ApiKey, ...] = ()
    open_access: bool = True

    def lookup(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None; every key is compared, in constant time each."""
        digest = _digest(secret)
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):  # no early exit: the loop takes as long either way
                found = key
        return found

    def has_scope(self, scope: Scope) -> bool:
        """Whether any key holds ``scope`` (none holding ``admin`` means the admin API is off)."""
        return any(scope in key.scopes for key in self.keys)


def builtin_keys(settings: Settings) -> list[ApiKey]:
    """``RR_ADMIN_KEY`` as key ``admin`` and ``RR_SEARCH_KEY`` as key ``search``, where set (and not empty)."""
    keys = []
    if settings.admin_key is not None and settings.admin_key.get_secret_value():
        keys.append(
            ApiKey("admin", _digest(settings.admin_key.get_secret_value()), frozenset(SCOPES), None, "RR_ADMIN_KEY")
        )
    if settings.search_key is not None and settings.search_key.get_secret_value():
        keys.append(
            ApiKey("search", _digest(settings.search_key.get_secret_value()), SEARCH_SCOPES, None, "RR_SEARCH_KEY")
        )
    return keys


def load_ring(settings: Settings) -> KeyRing:
    """The built-in keys and those of ``RR_KEYS_FILE``; KeyFileError (naming the entry) when the file is bad."""
    keys = builtin_keys(settings)
    if settings.keys_file is not None:
        keys += read_key_file(settings.keys_file, taken={key.digest: key.source for key in keys})
    has_search_key = any(key.source == "RR_SEARCH_KEY" for key in keys)
    return KeyRing(tuple(keys), open_access=settings.keys_file is None and not has_search_key)


def read_key_file(path: Path, *, taken: Mapping[bytes, str] | None = None) -> list[ApiKey]:
    """The keys of the TOML file at ``path``; ``taken`` maps secrets' digests already in use to who uses them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the key file {str(path)!r} (RR_KEYS_FILE): {exc}") from exc
    return parse_keys(text, source=str(path), taken=taken)


def parse_keys(text: str, *, source: str = "RR_KEYS_FILE", taken: Mapping[bytes, str] | None = None) -> list[ApiKey]:
    """The keys of a key file's text; KeyFileError naming the entry, its line and what is wrong.

    >>> parse_keys('[[keys]]\\nname = "ci"\\nhash = "sha256:' + 64 * "0" + '"\\nscopes = ["search"]')[0].name
    'ci'
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message says the line and column
        raise KeyFileError(f"{source}: not valid TOML: {exc}") from exc
    extra = sorted(set(document) - {"keys"})
    if extra:
        raise KeyFileError(f"{source}: unknown top-level entries {extra}; the file holds only [[keys]] tables")
    entries = document.get("keys", [])
    if not isinstance(entries, list):
        raise KeyFileError(f"{source}: 'keys' must be an array of tables ([[keys]] sections)")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if _ENTRY_HEADER.match(line)]
    seen_names: dict[str, int] = {}
    seen_digests = dict(taken or {})
    keys = []
    for index, entry in enumerate(entries, 1):
        where = f"{source}: key {index}" + (f" (line {lines[index - 1]})" if len(lines) == len(entries) else "")
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" {entry['name']!r}"
        try:
            key = _parse_entry(entry)
        except ValueError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        if key.name in seen_names:
            raise KeyFileError(f"{where}: the name {key.name!r} is already taken by key {seen_names[key.name]}")
        if key.digest in seen_digests:
            raise KeyFileError(f"{where}: the same secret as {seen_digests[key.digest]}: give every key its own")
        seen_names[key.name] = index
        seen_digests[key.digest] = f"key {index} {key.name!r}"
        keys.append(key)
    return keys


def _parse_entry(entry: object) -> ApiKey:
    """One ``[[keys]]`` table; ValueError saying what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError(f"must be a table with name, hash and scopes, got {type(entry).__name__}")
    if "secret" in entry:
        raise ValueError('plaintext secrets are not accepted: store `hash = "sha256:<hex>"` (`rr keys hash` prints it)')
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; valid fields are: {', '.join(_FIELDS)}")
    for required in ("name", "hash", "scopes"):
        if required not in entry:
            raise ValueError(f"missing {required!r}; every key needs name, hash and scopes")
    name = entry["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"invalid name {name!r}: 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise ValueError(f"the name {name!r} is reserved (reserved: {sorted(RESERVED_NAMES)})")
    digest = entry["hash"]
    if not isinstance(digest, str) or not _HASH.match(digest):
        raise ValueError("hash must be 'sha256:' and 64 hex digits, as `rr keys hash` prints it")
    scopes = _scopes(entry["scopes"])
    experts = _experts(entry.get("experts"), scopes)
    return ApiKey(name, bytes.fromhex(digest.removeprefix(HASH_PREFIX)), scopes, experts)


def _scopes(value: object) -> frozenset[Scope]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ValueError(f"scopes must be a non-empty list of scope names: {', '.join(SCOPES)}")
    unknown = [s for s in value if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; valid scopes are: {', '.join(SCOPES)}")
    return frozenset(cast(Iterable[Scope], value))


def _experts(value: object, scopes: frozenset[Scope]) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("experts must be a non-empty list of expert names (leave it out for every expert)")
    if "admin" in scopes:
        raise ValueError("the admin scope cannot be limited to experts: it publishes, removes and reloads anything")
    for name in value:
        check_expert_name(name)  # ValueError naming the bad name and what is valid
    return frozenset(value)


class KeyStore:
    """The ring in force, swapped whole on :meth:`reload`; reading ``current`` needs no lock.

    >>> store = KeyStore(settings)   # KeyFileError here is a start-up error
    >>> store.current.lookup("s3cret")
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: KeyRing = load_ring(settings)
        self._reloading = threading.Lock()  # one reload at a time (an admin call and SIGHUP may race)

    def reload(self) -> KeyRing:
        """Read the key file again and put its keys in force; on KeyFileError the keys in force stay."""
        if self.settings.keys_file is None:
            raise KeyFileError("there is no key file to reload: RR_KEYS_FILE is not set")
        with self._reloading:
            ring = load_ring(self.settings)
            self.current = ring  # one reference: a request sees the old ring or the new one, whole
        logger.info("API keys reloaded from %s: %s", self.settings.keys_file, ", ".join(k.name for k in ring.keys))
        return ring

    def reload_logged(self) -> None:
        """:meth:`reload` for a signal handler: a bad file is logged (the keys in force stay), never raised."""
        try:
            self.reload()
        except KeyFileError as exc:
            logger.error("API keys NOT reloaded, the previous keys stay in force: %s", exc.message)
