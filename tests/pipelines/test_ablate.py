"""sluice ablate: equal tokens, shared eval tokens, per-seed deltas, resume, and specs that fail before training."""

import json

import pytest
import yaml

from pipelines.ablate import AblationError, ablate, load_spec
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from tests.conftest import prose, write_jsonl

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("ablate")
    docs = [{"id": f"w{i}", "text": prose(i % 7) + f" Item {i}."} for i in range(40)]
    write_jsonl(root / "in" / "web.jsonl", docs)
    write_jsonl(root / "in" / "wiki.jsonl", [{"id": f"k{i}", "text": prose(i + 3)} for i in range(30)])
    tail = "  - {op: tokenize}\n  - {op: split, holdout_fraction: 0.1}\n"
    for name, extra in (("raw", ""), ("dedup", "  - {op: exact_dedup}\n")):
        text = (
            f"inputs:\n  - {{path: {root}/in/web.jsonl, domain: web, id_field: id}}\n"
            f"  - {{path: {root}/in/wiki.jsonl, domain: wiki, id_field: id}}\n"
            f"stages:\n{extra}{tail}output: {{dir: {root}/{name}}}\n"
        )
        run(parse_recipe(text), recipe_text=text)
    write_jsonl(root / "eval.jsonl", [{"question": f"What is item {i}?", "answer": prose(i)} for i in range(6)])
    # a run whose split leaves `wiki` without held-out documents
    text = (
        f"inputs:\n  - {{path: {root}/in/web.jsonl, domain: web, id_field: id}}\n"
        f"  - {{path: {root}/in/wiki.jsonl, domain: wiki, id_field: id}}\n"
        f"stages:\n  - {{op: tokenize}}\n  - {{op: split, holdout_fraction: {{web: 0.1, wiki: 0.0}}}}\n"
        f"output: {{dir: {root}/noholdout}}\n"
    )
    run(parse_recipe(text), recipe_text=text)
    (root / "notok").mkdir()
    text = f"inputs:\n  - {{path: {root}/in/web.jsonl, domain: web, id_field: id}}\noutput: {{dir: {root}/notok}}\n"
    run(parse_recipe(text), recipe_text=text)
    return root


def _spec(root, **over):
    spec = {
        "variants": {"raw": {"run": str(root / "raw")}, "dedup": {"run": str(root / "dedup")}},
        "baseline": "raw",
        "seeds": [0, 1],
        "eval": [f"{root}/eval.jsonl=qa"],
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 16, "compact_vocab": 64},
        "budget": {"steps": 4, "global_batch": 4},
        **over,
    }
    path = root / f"spec-{len(over)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_equal_tokens_shared_eval_tokens_deltas_and_resume(runs, tmp_path, caplog):
    spec = load_spec(_spec(runs))
    out = tmp_path / "abl"
    summary = ablate(spec, out)
    v = summary["variants"]
    assert summary["tokens_per_run"] == 4 * 4 * 16
    assert v["raw"]["tokens"] == v["dedup"]["tokens"] == [4 * 4 * 16]  # every run trained on the same tokens
    assert set(v["dedup"]["mean_eval_loss"]) == {"qa", "mean"}
    assert v["raw"]["delta_vs_baseline"]["mean"]["per_seed"] == [0.0, 0.0]
    assert len(v["dedup"]["delta_vs_baseline"]["mean"]["per_seed"]) == 2
    assert set(v["dedup"]["epochs"]) == {"web", "wiki"} and all(e > 0 for e in v["dedup"]["epochs"].values())
    assert "| dedup |" in (out / "results.md").read_text()
    html = (out / "results.html").read_text()
    assert "Sluice ablation" in html and "data:image/png;base64," in html and "dedup" in html
    assert json.loads((out / "results.json").read_text()) == summary
    # one finished pair removed: only it is trained again, and the results stand
    (out / "runs" / "dedup" / "seed1" / "ablation.json").unlink()
    caplog.set_level("INFO", logger="pipelines.ablate")
    again = ablate(spec, out)
    assert caplog.text.count("finished earlier, not retrained") == 3
    assert again["variants"]["raw"] == summary["variants"]["raw"]


def test_bad_specs_fail_before_training_naming_the_field(runs):
    with pytest.raises(AblationError, match=r"variants.raw.run: .* is not a finished Sluice run"):
        load_spec(_spec(runs, variants={"raw": {"run": str(runs / "nope")}, "dedup": {"run": str(runs / "dedup")}}))
    with pytest.raises(AblationError, match=r"variants.raw.run: .* has no tokens"):
        load_spec(_spec(runs, variants={"raw": {"run": str(runs / "notok")}, "dedup": {"run": str(runs / "dedup")}}))
    with pytest.raises(AblationError, match=r"eval\[0\]: eval set .* no files match"):
        load_spec(_spec(runs, eval=[str(runs / "missing.jsonl")]))
    with pytest.raises(AblationError, match="baseline: 'x' is not one of the variants"):
        load_spec(_spec(runs, baseline="x"))
    with pytest.raises(AblationError, match=r"budget.steps: Input should be greater than or equal to 1"):
        load_spec(_spec(runs, budget={"steps": 0}))
    with pytest.raises(AblationError, match=r"variants.dedup.target: 'code' is not a domain of .* \['web', 'wiki'\]"):
        variants = {
            "raw": {"run": str(runs / "raw")},
            "dedup": {"run": str(runs / "dedup"), "mixer": "dga", "target": "code"},
        }
        load_spec(_spec(runs, variants=variants))
    variants = {
        "raw": {"run": str(runs / "raw")},
        "dedup": {"run": str(runs / "dedup"), "mixer": "dga", "target": "wiki"},
    }
    assert load_spec(_spec(runs, variants=variants)).variants["dedup"].target == "wiki"
    # epoch caps that cannot serve budget.steps (every domain capped), or name an unknown domain
    caps = {"web": 0.5, "wiki": 0.5}
    variants = {"raw": {"run": str(runs / "raw")}, "dedup": {"run": str(runs / "dedup"), "epoch_caps": caps}}
    with pytest.raises(
        AblationError, match=r"variants.dedup.epoch_caps: the caps allow at most \d+ steps .*budget.steps is 100,000"
    ):
        load_spec(_spec(runs, variants=variants, budget={"steps": 100_000, "global_batch": 4}))
    assert load_spec(_spec(runs, variants=variants)).variants["dedup"].epoch_caps == caps  # 4 steps fit
    variants["dedup"]["epoch_caps"] = {"code": 1}
    with pytest.raises(AblationError, match=r"variants.dedup.epoch_caps: unknown domain\(s\) \['code'\]"):
        load_spec(_spec(runs, variants=variants))


def test_weight_series_averages_seeds_and_skips_static_mixtures():
    from pipelines.ablate import weight_series

    moving = [
        [{"step": 0, "weights": {"a": 0.5, "b": 0.5}}, {"step": 10, "weights": {"a": 0.7, "b": 0.3}}],
        [{"step": 0, "weights": {"a": 0.5, "b": 0.5}}, {"step": 10, "weights": {"a": 0.9, "b": 0.1}}],
    ]
    series = weight_series(moving)
    assert series["a"] == ([0, 10], [0.5, 0.8]) and series["b"][1] == [0.5, pytest.approx(0.2)]
    static = [[{"step": s, "weights": {"a": 0.5, "b": 0.5}} for s in (0, 10)]]
    assert weight_series(static) == {}


def test_a_domain_without_held_out_documents(runs, tmp_path):
    """A feedback mixer needs held-out loss in every domain: refused before training, naming the domain.
    A fixed mixture trains, and the held-out domains that exist are logged."""
    variants = {"raw": {"run": str(runs / "raw")}, "nohold": {"run": str(runs / "noholdout"), "mixer": "aioli"}}
    with pytest.raises(
        AblationError, match=r"variants.nohold.run: .* no held-out documents in wiki, and mixer 'aioli'"
    ):
        load_spec(_spec(runs, variants=variants))
    from pipelines.ablate import needs_held_out

    assert needs_held_out("dga") and not needs_held_out("ado") and not needs_held_out("stratified")  # ADO: train loss
    variants["nohold"] = {"run": str(runs / "noholdout")}
    summary = ablate(load_spec(_spec(runs, variants=variants, seeds=[0])), tmp_path / "abl")
    assert summary["variants"]["nohold"]["tokens"] == [4 * 4 * 16]
    hist = json.loads((tmp_path / "abl/runs/nohold/seed0/ablation.json").read_text())["result"]["history"]
    assert set(hist[-1]["eval_loss"]) == {"web"}


def test_a_run_curated_again_is_trained_again(monkeypatch):
    """The key of a finished pair carries the run's shard digests, not only the command line."""
    import pipelines.ablate as ab

    def digest(shards):
        monkeypatch.setattr(ab, "read_manifest", lambda run: {"shards": shards, "finished": "now"})
        return ab.run_digest("out/x")

    a = digest([{"path": "shards/domain=a/part-0.parquet", "sha256": "1"}])
    assert a == digest([{"path": "shards/domain=a/part-0.parquet", "sha256": "1", "rows": 3}])
    assert a != digest([{"path": "shards/domain=a/part-0.parquet", "sha256": "2"}])
