"""The API key file (app.api.keys): parsing, refusals that name the entry, lookup, reload; and `rr keys`."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from app.api import keys as keys_module
from app.api.keys import SCOPES, SEARCH_SCOPES, KeyStore, hash_secret, load_ring, parse_keys
from app.errors import KeyFileError
from app.settings import Settings
from tests.app.conftest import run_cli


def entry(name: str, secret: str, scopes: list[str], experts: list[str] | None = None) -> str:
    lines = ["[[keys]]", f'name = "{name}"', f'hash = "{hash_secret(secret)}"', f"scopes = {json.dumps(scopes)}"]
    if experts is not None:
        lines.append(f"experts = {json.dumps(experts)}")
    return "\n".join(lines) + "\n\n"


GOOD = entry("ci-reader", "reader-secret", ["search", "documents:read"], ["alpha"]) + entry(
    "ops", "ops-secret", ["admin"]
)


def settings(tmp_path: Path, text: str | None = GOOD, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path}
    if text is not None:
        path = tmp_path / "keys.toml"
        path.write_text(text)
        values["keys_file"] = path
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def test_a_key_file_gives_named_keys_with_scopes_and_experts_found_by_their_secret(tmp_path: Path) -> None:
    ring = load_ring(settings(tmp_path, admin_key="admin-secret", search_key="search-secret"))
    by_name = {key.name: key for key in ring.keys}
    assert sorted(by_name) == ["admin", "ci-reader", "ops", "search"]
    assert by_name["admin"].scopes == frozenset(SCOPES) and by_name["admin"].source == "RR_ADMIN_KEY"
    assert by_name["search"].scopes == SEARCH_SCOPES and by_name["search"].experts is None
    reader = by_name["ci-reader"]
    assert reader.scopes == {"search", "documents:read"} and reader.experts == {"alpha"}
    assert reader.public() == {
        "name": "ci-reader",
        "scopes": ["documents:read", "search"],
        "experts": ["alpha"],
        "source": "RR_KEYS_FILE",
    }
    assert "hash" not in repr(reader) and "digest" not in repr(reader)
    assert ring.lookup("reader-secret") is reader and ring.lookup("admin-secret") is by_name["admin"]
    assert ring.lookup("reader-secret ") is None and ring.lookup("") is None
    assert not ring.open_access


def test_access_is_open_only_without_a_search_key_and_without_a_key_file(tmp_path: Path) -> None:
    assert load_ring(settings(tmp_path, None, admin_key="admin-secret")).open_access
    assert not load_ring(settings(tmp_path, None, search_key="search-secret")).open_access
    assert not load_ring(settings(tmp_path, "")).open_access  # an empty file: no keys, and nothing is open
    assert load_ring(settings(tmp_path, None, search_key="")).open_access  # empty = unset, as before


def test_lookup_compares_every_key_even_after_a_match(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ring = load_ring(settings(tmp_path, GOOD + entry("third", "third-secret", ["embed"])))
    calls: list[bytes] = []
    real = keys_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", counting)
    assert ring.lookup("reader-secret") is not None  # the first key
    assert calls == [key.digest for key in ring.keys]
    assert ring.keys[0].digest == hashlib.sha256(b"reader-secret").digest()


BAD = [
    ("[[keys]]\nname = 'x'\nhash = \n", "not valid TOML", "line 3"),
    ("users = []\n", "unknown top-level entries ['users']", ""),
    ("keys = 'x'\n", "'keys' must be an array of tables", ""),
    (GOOD + entry("typo", "s3", ["serch"]), "key 3 (line 12) 'typo': unknown scope 'serch'; valid scopes are:", ""),
    (GOOD + entry("ops", "other", ["search"]), "key 3 (line 12) 'ops': the name 'ops' is already taken by key 2", ""),
    (GOOD + entry("dup", "ops-secret", ["search"]), "key 3 (line 12) 'dup': the same secret as key 2 'ops'", ""),
    (GOOD + entry("admin", "s4", ["search"]), "the name 'admin' is reserved", ""),
    (GOOD + entry("anonymous", "s4", ["search"]), "the name 'anonymous' is reserved", ""),
    (GOOD + entry("has space", "s4", ["search"]), "invalid name 'has space'", ""),
    (GOOD + entry("boss", "s5", ["admin"], ["alpha"]), "the admin scope cannot be limited to experts", ""),
    (GOOD + entry("x", "s6", ["search"], []), "experts must be a non-empty list", ""),
    (GOOD + entry("x", "s6", ["search"], ["Not A Name!"]), "Invalid expert name 'Not A Name!'", ""),
    (GOOD + entry("x", "s6", []), "scopes must be a non-empty list", ""),
    (GOOD + '[[keys]]\nname = "x"\nsecret = "plain"\nscopes = ["search"]\n', "plaintext secrets are not accepted", ""),
    (GOOD + '[[keys]]\nname = "x"\nhash = "md5:abc"\nscopes = ["search"]\n', "hash must be 'sha256:' and 64 hex", ""),
    (GOOD + '[[keys]]\nname = "x"\nscopes = ["search"]\n', "key 3 (line 12) 'x': missing 'hash'", ""),
    (
        GOOD + '[[keys]]\nname = "x"\nhash = "sha256:' + "0" * 64 + '"\nscope = ["search"]\n',
        "unknown fields ['scope']",
        "",
    ),
    ("keys = [1]\n", "key 1: must be a table with name, hash and scopes, got int", ""),
]


@pytest.mark.parametrize(("text", "says", "also"), BAD)
def test_a_malformed_file_is_refused_naming_the_entry_and_what_is_wrong(
    tmp_path: Path, text: str, says: str, also: str
) -> None:
    with pytest.raises(KeyFileError) as refused:
        load_ring(settings(tmp_path, text))
    message = refused.value.message
    assert says in message and also in message and str(tmp_path / "keys.toml") in message, message
    assert refused.value.status == 422 and refused.value.type == "invalid_key_file"


def test_a_file_key_may_not_reuse_a_built_in_keys_secret(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="the same secret as RR_ADMIN_KEY"):
        load_ring(settings(tmp_path, entry("copy", "admin-secret", ["search"]), admin_key="admin-secret"))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read the key file .*RR_KEYS_FILE"):
        load_ring(Settings(data_dir=tmp_path, keys_file=tmp_path / "nowhere.toml"))  # type: ignore[call-arg]


def test_reload_swaps_the_ring_whole_and_a_bad_file_keeps_the_keys_in_force(tmp_path: Path) -> None:
    store = KeyStore(settings(tmp_path))
    first = store.current
    assert first.lookup("ops-secret") is not None
    path = tmp_path / "keys.toml"
    path.write_text(entry("new", "new-secret", ["search"]))
    second = store.reload()
    assert store.current is second and second.lookup("ops-secret") is None and second.lookup("new-secret")
    path.write_text(GOOD + entry("bad", "x", ["nope"]))
    with pytest.raises(KeyFileError, match="unknown scope 'nope'"):
        store.reload()
    assert store.current is second
    store.reload_logged()  # a signal's reload logs the refusal instead of raising
    assert store.current is second


def test_reload_without_a_key_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="RR_KEYS_FILE is not set"):
        KeyStore(settings(tmp_path, None)).reload()


def test_parse_keys_names_the_entry_by_index_when_lines_cannot_be_told() -> None:
    with pytest.raises(KeyFileError, match=r"^RR_KEYS_FILE: key 1 'x': unknown scope"):
        parse_keys('keys = [{name = "x", hash = "sha256:' + "0" * 64 + '", scopes = ["nope"]}]')


# ---------------------------------------------------------------------- rr keys
def test_rr_keys_hash_reads_the_secret_on_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("foo\n"))
    code, out, _ = run_cli(["keys", "hash"], capsys)
    assert code == 0 and out.strip() == hash_secret("foo") == "sha256:" + hashlib.sha256(b"foo").hexdigest()
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    code, _, err = run_cli(["keys", "hash"], capsys)
    assert code == 2 and "the secret is empty" in err


def test_rr_keys_generate_prints_an_entry_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["keys", "generate", "--name", "ci"], capsys)
    assert code == 0
    secret = err.strip().rsplit(" ", 1)[1]
    (key,) = parse_keys(out)
    assert key.name == "ci" and key.digest == hashlib.sha256(secret.encode()).digest()


def test_rr_keys_check_lists_a_good_file_and_names_the_bad_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(GOOD)
    code, out, _ = run_cli(["keys", "check", str(path)], capsys)
    assert code == 0 and [key["name"] for key in json.loads(out)] == ["ci-reader", "ops"]
    assert "sha256" not in out
    path.write_text(GOOD + entry("typo", "s", ["serch"]))
    code, _, err = run_cli(["keys", "check", str(path)], capsys)
    assert code == 2 and "key 3 (line 12) 'typo': unknown scope 'serch'" in err
