"""quality_classifier: train on small separable data (fastText and embedding head), score, select."""

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from operators.classifier import EMBED_CHARS, QualityClassifier, read_docs, train_classifier
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import run
from storage.schema import READ_SCHEMA
from storage.shards import read_shards
from tests.conftest import write_jsonl

TOPICS = {
    topic: words.split()
    for topic, words in {
        "cooking": "recipe oven flour butter sugar bake simmer sauce garlic onion pan stir dough salt pepper kitchen",
        "sports": "match goal team coach season player score league stadium referee championship ball pitch fans",
        "finance": "market stock bond interest rate bank loan inflation investor dividend portfolio credit fund",
    }.items()
}
GLUE = ["the", "a", "and", "of", "to", "in", "with", "for", "on", "is", "was", "that", "it"]


def topic_doc(topic: str, seed: int, words: int = 40) -> str:
    rng = random.Random(f"{topic}:{seed}")
    vocab = TOPICS[topic]
    out = [rng.choice(vocab) if rng.random() < 0.5 else rng.choice(GLUE) for _ in range(words)]
    sentences = [" ".join(out[i : i + 10]).capitalize() + "." for i in range(0, words, 10)]
    return "\n".join(sentences)


def _batch(texts):
    n = len(texts)
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols.update(id=[f"d{i}" for i in range(n)], text=texts, domain=["web"] * n, source=["t"] * n)
    return pa.table(cols, schema=READ_SCHEMA)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    pos = root / "pos.jsonl"
    write_jsonl(pos, [{"text": topic_doc("cooking", i)} for i in range(60)])
    neg = root / "neg.txt"  # plain text: one document per line
    neg.write_text("\n".join(topic_doc("sports", i).replace("\n", " ") for i in range(60)) + "\n")
    return root, pos, neg


def test_read_docs_formats(files):
    _, pos, neg = files
    assert len(read_docs(pos)) == 60 and "\n" in read_docs(pos)[0]
    assert len(read_docs(neg)) == 60
    bad = pos.parent / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object with a string field 'text'"):
        read_docs(bad)


def test_fasttext_classifier_predicts_held_out_documents(files):
    root, pos, neg = files
    report = train_classifier([str(pos)], [str(neg)], str(root / "q.bin"), epoch=20, bucket=20_000)
    assert report["positive"] == 60 and report["negative"] == 60
    assert report["validation_accuracy"] >= 0.9
    op = QualityClassifier(stage="q", model=str(root / "q.bin"), threshold=0.5)
    texts = [topic_doc("cooking", 1000 + i) for i in range(10)] + [topic_doc("sports", 1000 + i) for i in range(10)]
    out = op(_batch(texts))
    q = np.array(out.column("quality").to_pylist())
    assert (q[:10] > 0.5).mean() >= 0.9 and (q[10:] < 0.5).mean() >= 0.9
    reasons = out.column("reason").to_pylist()
    assert reasons[10:].count("quality_below_threshold") >= 9 and reasons[:10].count(None) >= 9


def test_embedding_classifier_predicts_held_out_documents(files):
    root, pos, neg = files
    head = root / "head.json"
    report = train_classifier([str(pos)], [str(neg)], str(head), kind="embedding", C=10.0)
    assert report["validation_accuracy"] >= 0.9
    saved = json.loads(head.read_text())
    assert saved["encoder"] == "packaged:minilm-l6-v2" and len(saved["coef"]) == 384
    assert head.stat().st_size < 50_000
    op = QualityClassifier(stage="q", kind="embedding", model=str(head))
    texts = [topic_doc("cooking", 2000 + i) for i in range(6)] + [topic_doc("sports", 2000 + i) for i in range(6)]
    q = op.predict(texts)
    assert (q[:6] > 0.5).all() and (q[6:] < 0.5).all()


def test_validate_params(files, tmp_path):
    root, _, _ = files
    with pytest.raises(
        ValueError, match=r"model file 'nope.bin' does not exist; train one with `sluice train-classifier"
    ):
        QualityClassifier.validate_params(stage="q", model="nope.bin")
    with pytest.raises(ValueError, match="at most one of `threshold` and `top_fraction`"):
        QualityClassifier.validate_params(stage="q", model=str(root / "pos.jsonl"), threshold=0.5, top_fraction=0.1)
    with pytest.raises(ValueError, match=r"top_fraction: Input should be less than 1, got 1.5"):
        QualityClassifier.validate_params(stage="q", model=str(root / "pos.jsonl"), top_fraction=1.5)
    head = tmp_path / "h.json"
    head.write_text(json.dumps({"format": "sluice-embedding-head", "encoder": "some-org/uncached", "coef": []}))
    with pytest.raises(ValueError, match="packaged:smollm2-135m, packaged:minilm-l6-v2"):
        QualityClassifier.validate_params(stage="q", kind="embedding", model=str(head))
    write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    with pytest.raises(
        RecipeError, match=r"stages\[0\]\.op \(line 3\): .*at most one of `threshold` and `top_fraction`"
    ):
        parse_recipe(
            f'inputs: [{{path: "{tmp_path}/in.jsonl", domain: web}}]\nstages:\n'
            f"  - {{op: quality_classifier, model: {root}/pos.jsonl, threshold: 0.5, top_fraction: 0.1}}\n"
        )
    with pytest.raises(RecipeError, match=r"stages\[0\]\.kind \(line 3\)"):
        parse_recipe(
            f'inputs: [{{path: "{tmp_path}/in.jsonl", domain: web}}]\nstages:\n'
            f"  - {{op: quality_classifier, kind: svm, model: {head}}}\n"
        )


def test_expand_routes_embedding_to_a_model_operator(files, tmp_path):
    _, pos, neg = files
    write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    train_classifier([str(pos)], [str(neg)], str(tmp_path / "h.json"), kind="embedding", validation_fraction=0)
    r = parse_recipe(
        f'inputs: [{{path: "{tmp_path}/in.jsonl", domain: web}}]\nstages:\n'
        f"  - {{op: quality_classifier, kind: embedding, model: {tmp_path}/h.json, top_fraction: 0.25}}\n"
    )
    assert [(s.op, s.stage_name) for s in r.stages] == [
        ("embedding_classifier", "quality_classifier"),
        ("percentile_filter", "quality_classifier_top"),
    ]
    assert r.stages[1].params["band"] == [75.0, 100.0]


@pytest.mark.usefixtures("ray_session")
def test_top_fraction_through_the_runner(files, tmp_path):
    root, pos, neg = files
    model = root / "q2.bin"
    train_classifier([str(pos)], [str(neg)], str(model), epoch=20, bucket=20_000)
    docs = [{"id": f"c{i}", "text": topic_doc("cooking", 500 + i)} for i in range(10)]
    docs += [{"id": f"s{i}", "text": topic_doc("sports", 500 + i)} for i in range(30)]
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    m = run(
        parse_recipe(
            f"""inputs:
  - {{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id}}
stages:
  - {{op: quality_classifier, model: "{model}", top_fraction: 0.25}}
output: {{dir: "{tmp_path}/out", shard_mb: 0.002}}
"""
        )
    )
    assert m["conservation"]["ok"]
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    assert len(kept) == 10 and {r["id"][0] for r in kept} == {"c"}
    removed = read_shards(str(tmp_path / "out" / "removed")).to_pylist()
    assert {r["reason"] for r in removed} == {"quality_below_band"}
    report = m["stages"][2]["report"]
    assert report["band"] == [75.0, 100.0] and report["thresholds"]["*"]["high"] is None


def test_train_classifier_cli_function(files, tmp_path):
    import typer
    from typer.testing import CliRunner

    from pipelines.train_classifier import train_classifier_cmd

    _, pos, neg = files
    app = typer.Typer()
    app.command("train-classifier")(train_classifier_cmd)
    app.command("noop")(lambda: None)
    out = tmp_path / "m.bin"
    res = CliRunner().invoke(
        app,
        [
            "train-classifier",
            "--positive",
            str(pos),
            "--negative",
            str(neg),
            "-o",
            str(out),
            "--epoch",
            "20",
            "--bucket",
            "10000",
        ],
    )
    assert res.exit_code == 0, res.output
    assert out.exists() and '"validation_accuracy"' in res.output
    bad = CliRunner().invoke(app, ["train-classifier", "--positive", str(pos), "--negative", "nope.txt", "-o", "x"])
    assert bad.exit_code == 2 and "nope.txt" in bad.output


def test_shipped_recipe_validates(files, tmp_path, monkeypatch):
    from pathlib import Path

    from pipelines.recipe import load_recipe

    recipe = Path(__file__).parents[2] / "pipelines" / "recipes" / "classifier.yaml"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="train one with `sluice train-classifier"):
        load_recipe(recipe, check_inputs=False)
    _, pos, neg = files
    train_classifier([str(pos)], [str(neg)], "out/models/quality.bin", bucket=1000)
    r = load_recipe(recipe, check_inputs=False)
    assert [s.stage_name for s in r.stages][-2:] == ["quality", "quality_top"]


def test_long_documents_are_scored_on_a_bounded_prefix(files, tmp_path):
    _, pos, neg = files
    train_classifier([str(pos)], [str(neg)], str(tmp_path / "q.bin"), epoch=5, bucket=10_000)
    op = QualityClassifier(stage="q", model=str(tmp_path / "q.bin"), max_chars=1000)
    seen: list[int] = []
    proba = op.ft.proba
    op.ft.proba = lambda texts, label: seen.extend(len(t) for t in texts) or proba(texts, label)
    huge = " ".join(topic_doc("cooking", i) for i in range(6000))  # ~1.6 MB
    out = op(_batch([huge, "short"]))
    assert seen == [1000, 5]
    assert out.column("quality")[0].as_py() == pytest.approx(float(proba([huge[:1000]], op.label)[0]))
    assert QualityClassifier(stage="q", model=str(tmp_path / "q.bin"), max_chars=None).chars() is None
    with pytest.raises(ValueError, match=r"max_chars: Input should be greater than or equal to 1, got 0"):
        QualityClassifier.validate_params(stage="q", model=str(tmp_path / "q.bin"), max_chars=0)
    # the embedding encoder reads at most EMBED_CHARS (or max_chars if smaller)
    train_classifier([str(pos)], [str(neg)], str(tmp_path / "h.json"), kind="embedding", validation_fraction=0)
    emb = QualityClassifier(stage="q", kind="embedding", model=str(tmp_path / "h.json"))
    encode = emb.encoder.encode
    emb.encoder.encode = lambda texts, **kw: seen.extend(len(t) for t in texts) or encode(texts, **kw)
    seen.clear()
    emb(_batch([huge, "short"]))
    assert seen == [EMBED_CHARS, 5]
    seen.clear()
    emb.max_chars = 100
    emb(_batch([huge]))
    assert seen == [100]
