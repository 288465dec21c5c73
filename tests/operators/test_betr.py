"""betr: targets from one topic select that topic's documents from a mixed pool, by tokens."""

import numpy as np
import pytest

from operators.betr import NEG, POS, Betr, hash64, load_targets, rank_scores
from operators.classifier import train_fasttext
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import run
from storage.evalsets import record_text as target_text
from storage.shards import read_shards
from tests.conftest import make_batch, write_jsonl
from tests.operators.test_classifier import TOPICS, topic_doc


def test_target_text_concatenates_fields():
    rec = {"id": 7, "question": "Which pan?", "choices": ["iron", "steel"], "answer": "iron", "n": 3}
    assert target_text(rec, None) == "Which pan? iron steel iron"
    assert target_text(rec, ["answer", "question", "n"]) == "iron Which pan? 3"


def test_rank_scores_take_the_best_rank_over_targets():
    docs = np.eye(4, dtype=np.float32)
    targets = np.array([[1, 0.5, 0, 0], [0, 0, 0.2, 1]], dtype=np.float32)
    s = rank_scores(targets, docs)
    # target 0 ranks doc0 first, doc1 second; target 1 ranks doc3 first, doc2 second
    assert s.tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 1.0])


def test_hash_order_is_a_pure_function_of_seed_and_id():
    a = hash64(["x", "y", "z"], 1)
    assert (a == hash64(["x", "y", "z"], 1)).all() and (a != hash64(["x", "y", "z"], 2)).any()


def test_validate_params(tmp_path):
    t = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}])
    assert load_targets(str(t)) == ["q a"]
    with pytest.raises(ValueError, match=r"targets: Value error, file 'nope\.jsonl' does not exist"):
        Betr.validate_params(stage="b", targets="nope.jsonl")
    with pytest.raises(ValueError, match=r"keep_fraction: Input should be greater than 0, got 0"):
        Betr.validate_params(stage="b", targets=str(t), keep_fraction=0)
    with pytest.raises(ValueError, match=r"offline.*packaged:minilm-l6-v2"):
        Betr.validate_params(stage="b", targets=str(t), encoder="some-org/uncached-encoder")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.sample_size \(line 3\)"):
        parse_recipe(
            f'inputs: [{{path: "{t}", domain: web}}]\nstages:\n  - {{op: betr, targets: "{t}", sample_size: many}}\n'
        )


@pytest.mark.usefixtures("ray_session")
def test_betr_selects_target_like_documents_from_a_mixed_pool(tmp_path):
    targets = [
        {"question": f"How do I {w} the {v}?", "answer": topic_doc("cooking", 900 + i, 12)}
        for i, (w, v) in enumerate(zip(TOPICS["cooking"], reversed(TOPICS["cooking"])))
    ]
    write_jsonl(tmp_path / "targets.jsonl", targets)
    pool = [{"id": f"{t[0]}{i}", "text": topic_doc(t, i)} for t in TOPICS for i in range(50)]
    write_jsonl(tmp_path / "in" / "a.jsonl", pool[::2])
    write_jsonl(tmp_path / "in" / "b.jsonl", pool[1::2])
    recipe = parse_recipe(
        f"""inputs:
  - {{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id}}
stages:
  - op: betr
    targets: "{tmp_path}/targets.jsonl"
    sample_size: 120
    positive_fraction: 0.3
    keep_fraction: 0.3
    validation_fraction: 0.2
    min_count: 1
    epoch: 20
    lr: 0.1
    bucket: 20000
output: {{dir: "{tmp_path}/out", shard_mb: 0.002}}
"""
    )
    m = run(recipe)
    assert m["conservation"]["ok"] and m["conservation"]["read"] == 150
    report = m["stages"][1]["report"]
    assert report["sample_size"] == 120 and report["targets"] == len(targets)
    assert report["positives"] == 36 and report["validation_accuracy"] >= 0.8
    assert report["docs_scored"] == 150
    # the cutoff keeps 30% of the tokens, overshooting by less than one document
    assert 0.3 * report["tokens_total"] <= report["tokens_kept"] < 0.3 * report["tokens_total"] + 40 + 1
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    precision = np.mean([r["id"].startswith("c") for r in kept])
    assert precision >= 0.8, [r["id"] for r in kept]
    assert all(r["betr"] >= report["cutoff"] for r in kept)
    removed = read_shards(str(tmp_path / "out" / "removed")).to_pylist()
    assert {r["reason"] for r in removed} == {"betr_below_cutoff"} and len(kept) + len(removed) == 150


def test_shipped_recipe_validates(tmp_path, monkeypatch):
    from pathlib import Path

    from pipelines.recipe import load_recipe

    recipe = Path(__file__).parents[2] / "pipelines" / "recipes" / "betr.yaml"
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data" / "demo" / "docs" / "docs.jsonl.gz", [])
    r = load_recipe(recipe, check_inputs=False)
    assert r.stages[-1].op == "betr" and r.stages[-1].params["sample_size"] == 300


def test_fasttext_scores_a_bounded_prefix_of_long_documents(tmp_path):
    t = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}])
    texts = [topic_doc("cooking", i) for i in range(20)] + [topic_doc("sports", i) for i in range(20)]
    model = train_fasttext(texts, [POS] * 20 + [NEG] * 20, bucket=10_000, minCount=1)
    op = Betr(stage="b", targets=str(t), max_chars=500, _shared={"model": model.to_bytes(), "cutoff": 0.5})
    seen: list[int] = []
    proba = op.model().proba
    op.model().proba = lambda xs, label: seen.extend(len(x) for x in xs) or proba(xs, label)
    huge = " ".join(topic_doc("cooking", i) for i in range(4000))  # ~1 MB
    out = op(make_batch([huge, "short"]))
    assert seen == [500, 5]
    assert out.column("betr")[0].as_py() == pytest.approx(float(proba([huge[:500]], POS)[0]))
    assert out.column("text")[0].as_py() == huge
    with pytest.raises(ValueError, match=r"max_chars: Input should be greater than or equal to 1, got 0"):
        Betr.validate_params(stage="b", targets=str(t), max_chars=0)
