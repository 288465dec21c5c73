"""perplexity: fluent text scores lower than shuffled words; bands are chosen over the whole dataset."""

import copy
import random

import numpy as np
import pyarrow as pa
import pytest

from operators.models import ModelError
from operators.perplexity import CHARS_PER_TOKEN_CAP, Perplexity
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import run
from storage.schema import READ_SCHEMA
from storage.shards import read_shards
from tests.conftest import write_jsonl
from tests.operators.test_tokenize import Spy

FLUENT = [
    "The history of the city goes back to Roman times, when a small fort was built to guard the river crossing.",
    "Water boils at one hundred degrees Celsius at sea level, but at higher altitudes it boils at a lower point.",
    "She opened the door, looked outside, and decided that it was a good day for a long walk in the park.",
    "The committee will meet again next week to discuss the budget and the plans for the new library building.",
    "Most plants need sunlight, water and nutrients from the soil in order to grow strong and healthy leaves.",
    "After the game, the players thanked the fans who had travelled a long way to support them in the final.",
]


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def _batch(texts, removed=()):
    n = len(texts)
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols.update(id=[f"d{i}" for i in range(n)], text=texts, domain=["web"] * n, source=["t"] * n)
    cols["reason"] = ["x" if i in removed else None for i in range(n)]
    return pa.table(cols, schema=READ_SCHEMA)


@pytest.fixture(scope="module")
def scorer():
    return Perplexity(stage="perplexity", max_tokens=32, batch_size=3)


def test_fluent_text_has_lower_perplexity_than_shuffled_words(scorer):
    texts = FLUENT + [shuffled(t, i) for i, t in enumerate(FLUENT)]
    out = scorer(_batch(texts))
    ppl = np.array(out.column("ppl").to_pylist())
    fluent, noise = ppl[: len(FLUENT)], ppl[len(FLUENT) :]
    assert (fluent < noise).all(), (fluent, noise)
    assert fluent.max() < noise.min()
    assert all(0 < n <= 32 for n in out.column("n_tokens_ppl").to_pylist())


def test_length_sorted_batches_match_one_at_a_time_and_keep_order(scorer):
    texts = ["Short one.", FLUENT[0] + " " + FLUENT[1], "", FLUENT[3][:40], "Hi"]
    ids = scorer.encode(texts)
    nll, count = scorer.score_ids(ids)  # sorted by length inside, scores returned in input order
    for i, x in enumerate(ids):
        one_nll, one_count = scorer.score_ids([x])
        assert one_count[0] == count[i] == max(0, len(x) - 1)
        assert one_nll[0] == pytest.approx(nll[i], rel=1e-3, abs=1e-3)
    out = scorer(_batch(["", "Hi"]))
    assert out.column("ppl").to_pylist()[0] is None  # empty text: nothing to score
    assert out.column("n_tokens_ppl").to_pylist() == [0, 1]


def test_scores_match_the_models_own_loss(scorer):
    import torch

    x = scorer.encode([FLUENT[4]])[0]
    nll, count = scorer.score_ids([x])
    with torch.inference_mode():
        loss = scorer.model(input_ids=torch.tensor([x]), labels=torch.tensor([x])).loss
    assert nll[0] / count[0] == pytest.approx(float(loss), rel=1e-4)


def test_absolute_cutoffs_and_removed_rows_untouched(scorer):
    op = copy.copy(scorer)  # the same model with cutoffs
    op.stage, op.max_ppl, op.min_ppl = "ppl", 200.0, 1.0001
    texts = [FLUENT[0], shuffled(FLUENT[0] + " " + FLUENT[1], 1), FLUENT[1]]
    out = op(_batch(texts, removed=(2,)))
    assert out.column("reason").to_pylist() == [None, "ppl_too_high", "x"]
    assert out.column("stage").to_pylist()[1] == "ppl"
    assert out.column("ppl").to_pylist()[2] is None


def test_validate_params_names_the_packaged_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"packaged:smollm2-135m, packaged:minilm-l6-v2"):
        Perplexity.validate_params(stage="p", model="some-org/uncached-lm")
    with pytest.raises(ValueError, match=r"max_tokens: Input should be greater than or equal to 1, got 0"):
        Perplexity.validate_params(stage="p", max_tokens=0)
    with pytest.raises(ValueError, match=r"min_ppl \(50\) must be below max_ppl \(10\)"):
        Perplexity.validate_params(stage="p", max_ppl=10, min_ppl=50)
    write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    head = f'inputs: [{{path: "{tmp_path}/in.jsonl", domain: web}}]\nstages:\n'
    with pytest.raises(RecipeError, match=r"stages\[0\]\.op \(line 3\): .*offline.*packaged:smollm2-135m"):
        parse_recipe(head + "  - {op: perplexity, model: some-org/uncached-lm}\n")
    with pytest.raises(RecipeError, match=r"percentile_band \(line 3\).*band must satisfy 0 <= low < high <= 100"):
        parse_recipe(head + "  - {op: perplexity, keep: {percentile_band: [70, 30]}}\n")


@pytest.mark.usefixtures("ray_session")
def test_percentile_band_through_the_runner(tmp_path):
    docs = [{"id": f"f{i}", "text": t} for i, t in enumerate(FLUENT)]
    docs += [{"id": f"s{i}", "text": shuffled(t, i)} for i, t in enumerate(FLUENT)]
    write_jsonl(tmp_path / "in" / "a.jsonl", docs[::2])
    write_jsonl(tmp_path / "in" / "b.jsonl", docs[1::2])
    recipe = parse_recipe(
        f"""inputs:
  - {{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id}}
stages:
  - {{op: perplexity, max_tokens: 24, batch_size: 4, keep: {{percentile_band: [20, 60]}}}}
output: {{dir: "{tmp_path}/out", shard_mb: 0.002}}
"""
    )
    assert [s.stage_name for s in recipe.stages] == ["perplexity", "perplexity_band"]
    m = run(recipe)
    assert m["conservation"]["ok"] and m["conservation"]["read"] == 12
    report = m["stages"][2]["report"]
    t = report["thresholds"]["*"]
    assert t["rows"] == 12 and t["low"] < t["high"]
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    removed = read_shards(str(tmp_path / "out" / "removed")).to_pylist()
    assert all(t["low"] <= r["ppl"] <= t["high"] for r in kept)
    reasons = {r["id"]: r["reason"] for r in removed}
    assert sorted(set(reasons.values())) == ["ppl_above_band", "ppl_below_band"]
    assert all(r["stage"] == "perplexity_band" for r in removed)
    assert len(kept) == 12 - len(removed)
    # the lowest-perplexity documents are fluent, the highest shuffled
    assert all(reasons[i].startswith("ppl_below") for i in reasons if i.startswith("f"))
    assert all(reasons[i].startswith("ppl_above") for i in reasons if i.startswith("s"))
    assert m["stages"][2]["removed"] == {
        "ppl_above_band": sum(v == "ppl_above_band" for v in reasons.values()),
        "ppl_below_band": sum(v == "ppl_below_band" for v in reasons.values()),
    }


def test_shipped_recipe_validates():
    from pathlib import Path

    from pipelines.recipe import load_recipe

    r = load_recipe(Path(__file__).parents[2] / "pipelines" / "recipes" / "perplexity.yaml", check_inputs=False)
    assert [s.op for s in r.stages][-2:] == ["perplexity", "percentile_filter"]


def test_the_tokenizer_sees_at_most_the_character_budget(scorer, monkeypatch):
    spy = Spy(scorer.tok)
    monkeypatch.setattr(scorer, "tok", spy)
    huge = " ".join(FLUENT) * 4000  # ~2.6 MB
    out = scorer(_batch([huge, FLUENT[0]]))
    budget = scorer.max_tokens * CHARS_PER_TOKEN_CAP
    assert max(n for call in spy.calls for n in call) == budget == 32 * 16
    assert out.column("n_tokens_ppl").to_pylist()[0] == 32
    # the score is the prefix's, and the stored text is unchanged
    prefix = scorer(_batch([huge[:budget]])).column("ppl")[0].as_py()
    assert out.column("ppl")[0].as_py() == pytest.approx(prefix, rel=1e-3)
    assert out.column("text")[0].as_py() == huge
