"""``rr demo`` trains each expert beside the service and swaps the trained version in live (issue 19).

In-process, as ``rr demo`` runs it (its work in the app's after-start thread, publishing through the
service's publisher), on the tiny BERT and two tiny collections: ``alpha`` with a labelled train split
(as scifact has), ``beta`` corpus-only. A client searches throughout; no search may fail.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.offline.demo import build_beside_service, missing_experts, publish_demo
from app.offline.demo_training import untrained_experts
from experts import Encoder, ExpertDir, TrainConfig
from tests.app.service.conftest import ADMIN, service_settings, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A few steps of the default recipe's shape: the tests show the mechanics, not the quality.
TRAINING = TrainConfig(steps=6, batch_size=8, query_max_length=16)


def make_collections(datasets: Path) -> Path:
    """``alpha``: corpus, queries and qrels/train.tsv; ``beta``: corpus only (beta's is the smaller file)."""
    alpha, beta = datasets / "alpha", datasets / "beta"
    for collection in (alpha, beta):
        collection.mkdir(parents=True)
    write_corpus(alpha / "corpus.jsonl", "alpha", count=30)
    write_corpus(beta / "corpus.jsonl", "beta", count=20)
    queries = [{"_id": f"q{i}", "text": f"what about {word}"} for i, word in enumerate(["wing lift", "shock wave"] * 4)]
    (alpha / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (alpha / "qrels").mkdir()
    rows = "".join(f"q{i}\talpha-{i}\t1\n" for i in range(len(queries)))
    (alpha / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return datasets


class DemoRun:
    """One ``rr demo`` run on ``root``: the app, what its background work reported, and when it is done."""

    def __init__(self, root: Path, encoder: Encoder, datasets: Path, *, train: bool) -> None:
        names = ["alpha", "beta"]
        settings = service_settings(root)
        self.todo = missing_experts(settings, datasets, names)
        self.train = untrained_experts(settings, datasets, names) if train else []
        publish_demo(settings, [name for name in names if name not in self.todo])
        self.reported: list[tuple[str, str | None]] = []
        self.done = threading.Event()

        def after_start(service: Any) -> None:
            publisher = service.runtime.publisher

            def progress(name: str, doing: str | None) -> None:
                self.reported.append((name, doing))
                service.set_building(name, doing)
                if doing is not None and doing.startswith("training: step"):
                    time.sleep(0.05)  # slow enough for the client's polls to see the steps

            try:
                build_beside_service(
                    settings,
                    encoder,
                    datasets,
                    self.todo,
                    max_docs=None,
                    publish=lambda name: publisher.add_path(name, replace=name in publisher.entries),
                    progress=progress,
                    stopping=lambda: service.closing,
                    echo=lambda _: None,
                    train=self.train,
                    training=TRAINING,
                    swap_in=lambda directory: publisher.add_path(str(directory), replace=True),
                )
            finally:
                self.done.set()

        self.app = create_app(settings, encoder=encoder, after_start=after_start, building=self.todo)

    def watch(self, client: TestClient) -> tuple[list[dict[str, dict]], int, int]:
        """Poll GET /experts and search until the background work ends: (listings, searches, failed searches)."""
        listings: list[dict[str, dict]] = []
        searches = failed = 0
        serving = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            finished = self.done.is_set()
            listing = client.get("/experts", headers=ADMIN)
            if listing.status_code == 200:
                rows = {row["name"]: row for row in listing.json()["experts"]}
                listings.append(rows)
                serving = serving or any(row["state"] == "loaded" for row in rows.values())
            if serving:  # before the first expert serves, a search is refused (503): that is not a failure
                response = client.post("/search", json={"query": "wing lift and shock wave", "k": 3}, headers=ADMIN)
                searches += 1
                failed += response.status_code != 200 or len(response.json()["results"][0]["hits"]) != 3
            if finished:
                return listings, searches, failed
            time.sleep(0.02)
        raise AssertionError(f"the demo's background work did not end: {self.reported[-5:]}")


@pytest.fixture()
def collections(tmp_path: Path) -> Path:
    return make_collections(tmp_path / "datasets")


def test_each_expert_serves_untrained_then_trained_swapped_in_live(
    tmp_path: Path, tiny_encoder: Encoder, collections: Path
) -> None:
    root = tmp_path / "experts"
    run = DemoRun(root, tiny_encoder, collections, train=True)
    assert run.todo == ["beta", "alpha"] and run.train == ["beta", "alpha"]  # smallest corpus first
    with TestClient(run.app) as client:
        listings, searches, failed = run.watch(client)
        final = {row["name"]: row for row in client.get("/experts", headers=ADMIN).json()["experts"]}
        alpha = client.get("/experts/alpha", headers=ADMIN).json()
    assert searches > 10 and failed == 0, (searches, failed)
    # Order: each one trained once published (untrained), beside the next one's build; one at a time.
    for name in ("alpha", "beta"):
        queued = run.reported.index((name, "queued for training"))
        first_step = run.reported.index((name, f"training: step 0/{TRAINING.steps}"))
        assert run.reported.index((name, "publishing")) < queued < first_step
    done = [i for i, (name, doing) in enumerate(run.reported) if doing == f"training: step {TRAINING.steps}/6"]
    assert run.reported.index(("alpha", f"training: step 0/{TRAINING.steps}")) > done[0]
    assert [name for name, doing in run.reported if doing == f"training: step {TRAINING.steps}/6"] == ["beta", "alpha"]
    for name in ("alpha", "beta"):
        rows = [listing[name] for listing in listings if name in listing]
        untrained = [row for row in rows if row["state"] == "loaded" and not row["adapter"]["trained"]]
        training = [row for row in untrained if (row.get("building") or "").startswith("training: step")]
        assert untrained and training, rows[-3:]  # served untrained, and GET /experts showed it training
        assert final[name]["state"] == "loaded" and final[name]["adapter"]["trained"] and not final[name]["building"]
        assert final[name]["version"] > untrained[-1]["version"]
        assert final[name]["path"].startswith(f"uploads/{name}-trained-")
    # The untrained version is kept (a rollback serves it again); nothing was renamed under it.
    assert [(v["path"], v["trained"]) for v in alpha["versions"]] == [(alpha["path"], True), ("alpha", False)]
    assert not ExpertDir(root / "alpha").read_manifest().adapter.trained
    assert not (root / ".versions").exists()
    # The serving version's index was reused (hard links), not embedded again.
    old, new = ExpertDir(root / "alpha").read_manifest(), ExpertDir(root / alpha["path"]).read_manifest()
    assert old.index is not None and new.index is not None
    same = (
        root / "alpha" / old.index.directory / "docs.sqlite",
        root / alpha["path"] / new.index.directory / "docs.sqlite",
    )
    assert same[0].stat().st_ino == same[1].stat().st_ino
    # alpha was trained on its labelled split too, beta on its corpus alone.
    assert "supervised" in ExpertDir(root / alpha["path"]).read_manifest().training.pair_kinds  # type: ignore[union-attr]

    # A later run: everything on disk is trained, so nothing is built or trained again.
    again = DemoRun(root, tiny_encoder, collections, train=True)
    assert again.todo == [] and again.train == []
    with TestClient(again.app) as client:
        _, _, failed = again.watch(client)
        rows = {row["name"]: row for row in client.get("/experts", headers=ADMIN).json()["experts"]}
    assert failed == 0 and not any(doing and doing.startswith("training") for _, doing in again.reported)
    assert {name: (row["version"], row["path"]) for name, row in rows.items()} == {
        name: (final[name]["version"], final[name]["path"]) for name in ("alpha", "beta")
    }


def test_a_failed_training_leaves_the_untrained_version_serving_and_says_why(
    tmp_path: Path, tiny_encoder: Encoder, collections: Path
) -> None:
    root = tmp_path / "experts"
    first = DemoRun(root, tiny_encoder, collections, train=False)  # rr demo --no-train
    assert first.train == []
    with TestClient(first.app) as client:
        first.watch(client)
        before = {row["name"]: row for row in client.get("/experts", headers=ADMIN).json()["experts"]}
    assert not before["alpha"]["adapter"]["trained"] and not before["alpha"]["building"]
    # alpha's labelled split is now unreadable: its training fails (its pilots were built from it before).
    (collections / "alpha" / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1 alpha-1\n")
    second = DemoRun(root, tiny_encoder, collections, train=True)
    assert second.todo == [] and second.train == ["beta", "alpha"]
    with TestClient(second.app) as client:
        _, _, failed = second.watch(client)
        rows = {row["name"]: row for row in client.get("/experts", headers=ADMIN).json()["experts"]}
        ready = client.get("/readyz")
        routed = client.post("/search", json={"query": "wing lift", "k": 2, "expert": "alpha"}, headers=ADMIN)
    assert failed == 0 and routed.status_code == 200, routed.text
    alpha = rows["alpha"]
    assert alpha["state"] == "loaded" and not alpha["adapter"]["trained"] and alpha["path"] == "alpha"
    assert alpha["version"] == before["alpha"]["version"]
    assert alpha["building"].startswith("training failed (the untrained version serves): ")
    assert "train.tsv:2: expected 'query-id<TAB>corpus-id<TAB>score'" in alpha["building"]
    assert ready.status_code == 200 and ready.json()["building"] == {"alpha": alpha["building"]}
    assert rows["beta"]["adapter"]["trained"]  # one failure does not stop the others
    assert [d.name for d in (root / "uploads").iterdir()] == [Path(rows["beta"]["path"]).parent.name]


def test_shutdown_waits_for_the_work_beside_the_service_to_stop(experts_root: Path, tiny_encoder: Encoder) -> None:
    """The process must not exit while ``rr demo``'s training thread is inside a torch operator (it aborts, 134)."""
    steps: list[str] = []

    def after_start(service: Any) -> None:  # a training loop: it checks closing between steps, as the demo's does
        while not service.closing:
            tiny_encoder.embed(["a step of training"])
            time.sleep(0.01)
        time.sleep(0.3)  # the step running when closing turned true
        steps.append("stopped")

    app = create_app(service_settings(experts_root), encoder=tiny_encoder, after_start=after_start)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while app.state.service.beside is None and time.monotonic() < deadline:
            client.get("/healthz")
            time.sleep(0.02)
        assert app.state.service.beside is not None and app.state.service.beside.is_alive()
    assert steps == ["stopped"], "shutdown returned before the work beside the service had stopped"
    assert not app.state.service.beside.is_alive()
