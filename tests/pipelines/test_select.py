"""select: re-selection from stored scores with SQL and token budgets; conservation against the source run."""

import hashlib
import json

import pytest
import typer
from typer.testing import CliRunner

from operators.classifier import train_classifier
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from pipelines.select import parse_count, select, select_cmd
from storage.shards import read_shards
from storage.views import connect
from tests.conftest import write_jsonl
from tests.operators.test_classifier import topic_doc


@pytest.fixture(scope="module")
def source(tmp_path_factory, ray_session):
    """A finished run: two domains, quality scores, n_tokens for `cook` only, one malformed input row."""
    root = tmp_path_factory.mktemp("sel")
    write_jsonl(root / "pos.jsonl", [{"text": topic_doc("cooking", i)} for i in range(40)])
    write_jsonl(root / "neg.jsonl", [{"text": topic_doc("sports", i)} for i in range(40)])
    train_classifier([str(root / "pos.jsonl")], [str(root / "neg.jsonl")], str(root / "q.bin"), epoch=20, bucket=20_000)
    cook = [{"id": f"c{i:02d}", "text": topic_doc("cooking", 100 + i, 20 + 7 * (i % 5))} for i in range(24)]
    sport = [{"id": f"s{i:02d}", "text": topic_doc("sports", 100 + i, 20 + 5 * (i % 4))} for i in range(20)]
    write_jsonl(root / "in" / "cook.jsonl", [*cook, b"{not json"])
    write_jsonl(root / "in" / "sport.jsonl", sport)
    m = run(
        parse_recipe(
            f"""inputs:
  - {{path: "{root}/in/cook.jsonl", domain: cook, id_field: id}}
  - {{path: "{root}/in/sport.jsonl", domain: sport, id_field: id}}
stages:
  - {{op: quality_classifier, model: "{root}/q.bin"}}
  - {{op: tokenize, domains: [cook]}}
output: {{dir: "{root}/run", shard_mb: 0.002}}
"""
        )
    )
    assert m["conservation"] == {**m["conservation"], "read": 45, "kept": 44, "removed": 1, "ok": True}
    return root, str(root / "run")


def _docs(run_dir):
    return read_shards(f"{run_dir}/shards").to_pylist()


def _md5(doc_id, seed=0):
    return hashlib.md5(f"{seed}:{doc_id}".encode()).hexdigest()


def _tokens(doc):
    return doc["n_tokens"] if doc.get("n_tokens") is not None else len(doc["text"].split())


def test_where_filter_conserves_rows_and_copies_removed(source, tmp_path):
    _, src = source
    m = select(src, "quality > 0.5", dest=str(tmp_path / "hq"))
    kept = _docs(tmp_path / "hq")
    assert {d["id"][0] for d in kept} == {"c"} and len(kept) == 24
    c = m["conservation"]
    assert c["ok"] and c["read"] == 45 and c["kept"] == 24 and c["removed"] == 21
    removed = read_shards(str(tmp_path / "hq" / "removed")).to_pylist()
    assert {(r["stage"], r["reason"]) for r in removed} == {
        ("input", "input_bad_json"),
        ("select", "select_not_selected"),
    }
    assert m["stages"][-1]["removed"] == {"select_not_selected": 20}
    # scores are carried, never recomputed; columns and types are the source's
    before = {d["id"]: d["quality"] for d in _docs(src)}
    assert all(d["quality"] == before[d["id"]] for d in kept)
    con = connect(str(tmp_path / "hq"))
    assert con.execute("SELECT count(*) FROM docs").fetchone()[0] == 24
    assert con.execute("SELECT sum(rows) FROM shards").fetchone()[0] == 24


def test_budget_is_met_within_one_document_in_hash_order(source, tmp_path):
    _, src = source
    docs = _docs(src)
    total = sum(_tokens(d) for d in docs)
    budget = total // 3
    m = select(src, None, budget, dest=str(tmp_path / "b"))
    kept = _docs(tmp_path / "b")
    got = sum(_tokens(d) for d in kept)
    assert m["stages"][-1]["report"]["kept_tokens"] == got
    # expected: the prefix of the hash order that fits
    order = sorted(docs, key=lambda d: _md5(d["id"]))
    want, acc = [], 0
    for d in order:
        if acc + _tokens(d) > budget:
            nxt = _tokens(d)
            break
        acc += _tokens(d)
        want.append(d["id"])
    assert sorted(d["id"] for d in kept) == sorted(want)
    assert got <= budget < got + nxt
    assert m["conservation"]["ok"]
    assert set(m["stages"][-1]["removed"]) == {"select_over_budget"}
    assert m["stages"][-1]["report"]["token_unit"] == "n_tokens"


def test_per_domain_budgets_and_order_by(source, tmp_path):
    _, src = source
    m = select(src, None, None, {"cook": 150, "sport": 200}, str(tmp_path / "pd"), "quality DESC")
    kept = _docs(tmp_path / "pd")
    all_docs = _docs(src)
    for dom, cap in (("cook", 150), ("sport", 200)):
        mine = sorted((d for d in all_docs if d["id"][0] == dom[0]), key=lambda d: (-d["quality"], _md5(d["id"])))
        got = [d for d in kept if d["id"][0] == dom[0]]
        n = len(got)
        assert {d["id"] for d in got} == {d["id"] for d in mine[:n]}  # the best by quality, ties in hash order
        used = sum(_tokens(d) for d in got)
        assert used <= cap < used + _tokens(mine[n])
    assert m["stages"][-1]["report"]["domains"]["cook"]["budget"] == 150
    assert m["conservation"]["ok"]


def test_selecting_from_a_selection_still_conserves(source, tmp_path):
    _, src = source
    select(src, "quality > 0.5", dest=str(tmp_path / "a"))
    m = select(str(tmp_path / "a"), "n_tokens > 25", dest=str(tmp_path / "b"))
    c = m["conservation"]
    assert c["ok"] and c["read"] == 45
    assert all(d["n_tokens"] > 25 for d in _docs(tmp_path / "b"))
    assert [s["stage"] for s in m["stages"]][-2:] == ["select", "select"]


def test_errors(source, tmp_path):
    _, src = source
    with pytest.raises(ValueError, match=r"DuckDB rejected the selection.*no_such_column"):
        select(src, "no_such_column > 1", dest=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="domains not in the run: legal"):
        select(src, per_domain_budget={"legal": 10}, dest=str(tmp_path / "y"))
    select(src, dest=str(tmp_path / "z"))
    with pytest.raises(FileExistsError, match="is not empty"):
        select(src, dest=str(tmp_path / "z"))
    assert select(src, dest=str(tmp_path / "z"), overwrite=True)["conservation"]["ok"]
    assert parse_count("50M") == 50_000_000 and parse_count("1.5k") == 1500
    with pytest.raises(ValueError, match="not a token count"):
        parse_count("lots")


def test_cli_function(source, tmp_path):
    _, src = source
    app = typer.Typer()
    app.command("select")(select_cmd)
    app.command("noop")(lambda: None)  # a second command so `select` is a subcommand, as in sluice
    out = str(tmp_path / "cli")
    args = ["select", src, "--where", "quality > 0.5", "--per-domain-budget", "cook=100", "-o", out]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Selected" in res.output and "select_over_budget" in res.output
    m = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert m["conservation"]["ok"] and m["stages"][-1]["report"]["per_domain_budget"] == {"cook": 100}
    bad = CliRunner().invoke(app, ["select", src, "--per-domain-budget", "cook", "-o", str(tmp_path / "cli2")])
    assert bad.exit_code == 2 and "DOMAIN=TOKENS" in bad.output
