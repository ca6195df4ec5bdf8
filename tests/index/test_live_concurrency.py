"""Searches racing writers and merges, with real threads: every result agrees with the acknowledged writes."""

from __future__ import annotations

import threading
from pathlib import Path

from index.live.live_collection import LiveCollection
from tests.index.conftest import fake_embed
from tests.index.live_helpers import build_collection, doc, open_live

ROUNDS = 60


def _text(i: int) -> str:
    return f"writer document {i} unique{i}"


class Acks:
    """What the writer has had acknowledged: doc id -> "present" | "deleting" (a delete begun) | "deleted"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}

    def set(self, doc_id: str, state: str) -> None:
        with self._lock:
            self._state[doc_id] = state

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._state)


def _writer(live: LiveCollection, acks: Acks, tmp_path: Path, done: threading.Event) -> None:
    try:
        merges = []
        for i in range(ROUNDS):
            live.upsert([doc(f"w{i}", _text(i))])
            acks.set(f"w{i}", "present")
            if i >= 5:
                # Marked before the delete starts: a search that ends after it started may miss the document
                # before the delete is acknowledged, and must not be held to find it.
                acks.set(f"w{i - 5}", "deleting")
                acks.set(f"d{i}", "deleting")
                live.delete([f"w{i - 5}", f"d{i}"])
                acks.set(f"w{i - 5}", "deleted")
                acks.set(f"d{i}", "deleted")
            if i in (20, 40):
                if merges:  # one merge at a time; the writes above ran while the first one did
                    merges[-1].result(timeout=120)
                merges.append(live.start_merge(tmp_path / f"gen-{i}"))
        merges[-1].result(timeout=120)
    finally:
        done.set()


def _check(live: LiveCollection, acks: Acks, main_texts: dict[str, str], *, use_view: bool) -> int:
    """One round of searches; returns how many expectations it checked."""
    before = acks.snapshot()
    names = sorted(before)
    texts = [_text(int(n[1:])) if n.startswith("w") else main_texts[n] for n in names]
    view = live.view() if use_view else live
    dense = view.hits(*view.search_dense(fake_embed(texts), 1))
    words = [n for n in names if n.startswith("w")]
    lexical = view.hits(*view.search_lexical([f"unique{n[1:]}" for n in words], 3))
    after = acks.snapshot()
    checked = 0
    for name, hits in zip(names, dense, strict=True):
        found = [h.id for h in hits]
        if before[name] == "deleted":
            assert name not in found, f"{name} deleted before the search began, still found"
        elif after[name] == "present":
            assert found == [name], f"{name} acknowledged before the search began, not found: {found}"
        checked += 1
    for name, hits in zip(words, lexical, strict=True):
        found = [h.id for h in hits]
        if before[name] == "deleted":
            assert found == [], f"{name} deleted before the lexical search began, still found"
        elif after[name] == "present":
            assert found == [name], f"{name} acknowledged before the lexical search began, not found: {found}"
        checked += 1
    return checked


def test_searches_during_writes_and_merges_see_every_acknowledged_write(tmp_path: Path) -> None:
    generation = build_collection(tmp_path)
    acks, done, errors, checks = Acks(), threading.Event(), [], [0, 0]

    with open_live(generation, tmp_path / "live.sqlite") as live:
        main_texts = {f"d{i}": live.get(f"d{i}").passage() for i in range(ROUNDS)}

        def reader(slot: int) -> None:
            try:
                while not done.is_set():
                    checks[slot] += _check(live, acks, main_texts, use_view=slot == 0)
                checks[slot] += _check(live, acks, main_texts, use_view=slot == 0)
            except Exception as exc:  # an assertion: reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(slot,)) for slot in (0, 1)]
        threads.append(threading.Thread(target=_writer, args=(live, acks, tmp_path, done)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors[0]
        assert min(checks) > 100  # both readers really raced the writer
        assert live.main.directory == tmp_path / "gen-40"  # both merges landed
        assert len(live) == 300 - (ROUNDS - 5) + 5
