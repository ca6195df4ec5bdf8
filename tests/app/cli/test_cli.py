"""The ``rr`` command line end to end, on the tiny BERT and slices of two real collections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.conftest import run_cli, slice_corpus, write_jsonl
from tests.conftest import save_random_adapter


@pytest.fixture()
def two_experts(cli_env: Path, datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    for name in ("cranfield", "cacm"):
        corpus = slice_corpus(datasets / name / "corpus.jsonl", tmp_path / f"{name}.jsonl", 60)
        assert run_cli(["create-expert", name], capsys)[0] == 0
        code, out, err = run_cli(
            ["index", "--expert", name, "--corpus", str(corpus), "--no-progress", "--chunk-size", "16"], capsys
        )
        assert code == 0, err
        assert f"indexed 60 documents into '{name}'" in out
        code, out, err = run_cli(["pilots", "--expert", name, "--from-documents", "40"], capsys)
        assert code == 0, err
        # The default pilots are the pseudo queries themselves (method "queries"): one per sampled document.
        assert "built 40 pilot(s)" in out
    return cli_env


def test_build_route_and_search(two_experts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["experts", "--json"], capsys)
    listed = {row["name"]: row for row in json.loads(out)}
    assert set(listed) == {"cranfield", "cacm"}
    assert listed["cacm"]["documents"] == 60 and listed["cacm"]["pilots"] == 40 and listed["cacm"]["version"] == 3

    code, out, _ = run_cli(["route", "--json", "boundary layer", "compilers"], capsys)
    assert code == 0
    decisions = json.loads(out)
    assert [len(d["router_scores"]) for d in decisions] == [2, 2]
    # The default policy hedges: an expert within RR_ROUTE_FANOUT_MARGIN of the top one is searched too.
    assert all(d["experts"][0] in {"cranfield", "cacm"} and d["mode"] in {"top1", "fanout"} for d in decisions)

    code, out, _ = run_cli(["search", "--json", "-k", "5", "boundary layer", "compilers"], capsys)
    assert code == 0
    body = json.loads(out)
    assert len(body["results"]) == 2 and {"base_ms", "route_ms", "expert_ms", "search_ms"} <= set(body["timings_ms"])
    for result in body["results"]:
        hits = result["hits"]
        assert len(hits) == 5 and all(hit["title"] or hit["text"] for hit in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # `rr route` shows the decisions the search made (pilots and the default corpus votes alike).
    for decision, result in zip(decisions, body["results"], strict=True):
        searched = result["route"]
        assert (decision["experts"], decision["mode"]) == (searched["experts"], searched["mode"])
        assert decision["router_scores"] == pytest.approx(searched["router_scores"], abs=1e-5)

    code, out, _ = run_cli(["search", "-k", "3", "--expert", "cacm", "compilers"], capsys)
    assert code == 0 and "expert: cacm (expert named by the caller)" in out and " 3. " in out

    code, out, _ = run_cli(["search", "--json", "--top-k", "2", "-k", "4", "lift"], capsys)
    route = json.loads(out)["results"][0]["route"]
    assert route["mode"] == "fanout" and sorted(route["experts"]) == ["cacm", "cranfield"]


def test_bad_inputs_are_one_line_errors(two_experts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["search", "--expert", "lawx", "anything"], capsys)
    assert code == 2 and "Expert 'lawx' not found. Published experts: ['cacm', 'cranfield']" in err
    code, _, err = run_cli(["search", "-k", "0", "anything"], capsys)
    assert code == 2 and "k must be a positive integer" in err
    code, _, err = run_cli(["search", "  "], capsys)
    assert code == 2 and "query 0 is empty" in err
    code, _, err = run_cli(["index", "--expert", "nobody", "--corpus", "x.jsonl"], capsys)
    assert code == 2 and "Expert 'nobody' not found" in err and "['cacm', 'cranfield']" in err
    code, _, err = run_cli(["pilots", "--expert", "cacm"], capsys)
    assert code == 2 and "exactly one of --queries or --from-documents" in err
    code, _, err = run_cli(["create-expert", "Bad Name"], capsys)
    assert code == 2 and "Invalid expert name" in err
    code, _, err = run_cli(["create-expert", "cacm"], capsys)
    assert code == 2 and "already exists" in err


def test_index_skips_malformed_lines_and_refuses_an_empty_corpus(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["create-expert", "mixed"], capsys)
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Wings", "text": "lift and drag"},
            "{not json",
            {"_id": "d2"},
            {"_id": "d3", "text": "shock waves"},
        ],
    )
    code, out, err = run_cli(["index", "--expert", "mixed", "--corpus", str(corpus), "--no-progress"], capsys)
    assert code == 0 and "indexed 2 documents" in out and "2 malformed lines skipped" in out
    assert "line 2" in err and "line 3" in err

    empty = write_jsonl(tmp_path / "empty.jsonl", ["{broken"])
    code, _, err = run_cli(["index", "--expert", "mixed", "--corpus", str(empty), "--no-progress"], capsys)
    assert code == 2 and "error:" in err
    code, out, _ = run_cli(["experts", "--json"], capsys)
    assert json.loads(out)[0]["documents"] == 2  # the failed build left the published index serving


def test_an_adapter_for_another_base_is_refused(
    cli_env: Path, other_bert_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = save_random_adapter(other_bert_path, tmp_path / "foreign", seed=5)
    code, _, err = run_cli(["create-expert", "law", "--adapter", str(foreign)], capsys)
    assert code == 2 and "was trained for a model where" in err
    assert not (cli_env / "law").exists()


def test_search_with_no_experts_says_so(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["search", "anything"], capsys)
    assert code == 2 and "no experts to route to" in err


def test_index_long_document_options(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["create-expert", "long"], capsys)
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"_id": "d1", "text": "lift and drag " * 100}, {"_id": "d2", "text": "shock waves"}],
    )
    base = ["index", "--expert", "long", "--corpus", str(corpus), "--no-progress"]
    code, out, err = run_cli([*base, "--long-documents", "error"], capsys)
    assert code == 0 and "indexed 1 documents" in out and "document 'd1' is 302 tokens long" in err
    code, out, _ = run_cli([*base, "--chunk-overlap", "8"], capsys)
    assert code == 0 and "indexed 2 documents" in out
    code, out, _ = run_cli(["experts", "--json"], capsys)
    assert json.loads(out)[0]["documents"] == 2
    code, _, err = run_cli([*base, "--long-documents", "split"], capsys)
    assert code == 2 and "Valid policies are: truncate, chunk, error" in " ".join(err.replace("│", " ").split())
    code, _, err = run_cli([*base, "--engine", "ray", "--long-documents", "chunk"], capsys)
    assert code == 2 and "--long-documents truncate" in " ".join(err.replace("│", " ").split())
    code, _, err = run_cli([*base, "--chunk-overlap", "200"], capsys)
    assert code == 2 and "overlap" in err
