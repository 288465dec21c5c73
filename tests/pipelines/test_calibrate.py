"""sluice calibrate on real text none of us wrote (the standard library's source): web-text rules
relaxed per domain until they keep the requested share of a trusted reference."""

import json
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.calibrate import reasons
from pipelines.cli import app
from pipelines.recipe import load_recipe, parse_recipe, stage_params
from pipelines.report import write_report
from pipelines.runner import run

FILES = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 2000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    (root / "code").mkdir()
    for p in FILES[:30]:
        (root / "code" / p.name).write_text(p.read_text(encoding="utf-8"))
    with open(root / "reference.jsonl", "w") as f:
        for p in FILES[30:90]:
            f.write(json.dumps({"text": p.read_text(encoding="utf-8"), "domain": "code"}) + "\n")
    (root / "recipe.yaml").write_text(
        f"inputs:\n  - {{path: {root}/code, format: text, domain: code}}\n"
        "stages:\n  - {op: normalize}\n  - {op: gopher_quality}\n  - {op: fineweb_quality}\n  - {op: exact_dedup}\n"
        f"output: {{dir: {root}/out}}\n"
    )
    return root


def _removed(op, params, texts):
    return sum(r is not None for r in reasons(op, params, texts)) / len(texts)


def test_calibrated_thresholds_keep_the_reference_and_only_relax(setup):
    root = setup
    res = CliRunner().invoke(
        app, ["calibrate", str(root / "recipe.yaml"), "--reference", str(root / "reference.jsonl"), "--keep", "0.9",
              "-o", str(root / "calibrated.yaml")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    before, after = load_recipe(root / "recipe.yaml"), load_recipe(root / "calibrated.yaml")
    ref = [json.loads(line)["text"] for line in (root / "reference.jsonl").read_text().splitlines()]
    by_op = {s.op: stage_params(s) for s in after.stages}
    assert [s.stage_name for s in after.stages] == [
        "normalize",
        "gopher_quality_code",
        "fineweb_quality_code",
        "exact_dedup",
    ]
    for op in ("gopher_quality", "fineweb_quality"):
        default = stage_params(next(s for s in before.stages if s.op == op))
        assert _removed(op, default, ref) > 0.5  # web-text defaults delete most of the real code
        assert _removed(op, by_op[op], ref) <= 0.1  # calibrated: keeps >= 90% of the reference
    g = by_op["gopher_quality"]
    assert g["min_alpha_words_ratio"] is None or g["min_alpha_words_ratio"] < 0.8  # looser, never stricter
    rules = after.calibration["rules"]
    assert {r["param"] for r in rules if r["stage"] == "gopher_quality"} >= {"min_doc_words", "(all rules)"}
    total = next(r for r in rules if r["stage"] == "fineweb_quality" and r["param"] == "(all rules)")
    assert total["reference_removed_after"] <= 0.1 < total["reference_removed_before"]
    assert total["corpus_removed_before"] is not None


def test_the_run_and_its_report_carry_the_calibration(setup, ray_session):
    root = setup
    text = (root / "calibrated.yaml").read_text()
    m = run(parse_recipe(text), recipe_text=text)
    assert m["recipe"]["calibration"]["keep"] == 0.9
    page = Path(write_report(str(root / "out"))).read_text()
    assert "Filter calibration" in page and "min_alpha_words_ratio" in page


def test_bad_calls_fail_clearly(setup, tmp_path):
    root = setup
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": "x", "domain": "web"}) + "\n")
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            str(root / "recipe.yaml"),
            "--reference",
            str(tmp_path / "other.jsonl"),
            "-o",
            str(tmp_path / "c.yaml"),
        ],
    )
    assert res.exit_code == 2 and "reference domains not in the recipe's inputs: web" in res.output
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            str(root / "recipe.yaml"),
            "--reference",
            str(root / "reference.jsonl"),
            "-o",
            str(root / "recipe.yaml"),
        ],
    )
    assert res.exit_code == 2 and "refused" in res.output


def test_score_threshold_keeps_the_requested_share():
    from pipelines.calibrate import score_threshold

    scores = [i / 100 for i in range(100)]
    t = score_threshold(scores, 0.9, keep_high=True)
    assert sum(s < t for s in scores) == 10 and t == 0.1
    t = score_threshold(scores, 0.9, keep_high=False)
    assert sum(s > t for s in scores) == 10 and t == 0.89


def test_a_classifier_threshold_is_set_to_keep_the_reference(tmp_path):
    """A quality_classifier stage selecting with `threshold` gets the per-domain threshold that keeps
    `keep` of the reference, stricter or looser than the written one; the corpus share is recorded."""
    from operators.classifier import train_classifier
    from pipelines.calibrate import calibrate
    from tests.operators.test_classifier import topic_doc

    pos = [{"text": topic_doc("cooking", i)} for i in range(80)]
    neg = [{"text": topic_doc("sports", i)} for i in range(80)]
    for name, rows in (("pos", pos), ("neg", neg)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_classifier(
        [str(tmp_path / "pos.jsonl")], [str(tmp_path / "neg.jsonl")], str(tmp_path / "q.bin"), epoch=20, bucket=20_000
    )
    ref = [topic_doc("cooking", 1000 + i) for i in range(40)]
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"text": t, "domain": "web"}) + "\n" for t in ref))
    corpus = (
        ref[:0] + [topic_doc("cooking", 2000 + i) for i in range(20)] + [topic_doc("finance", i) for i in range(20)]
    )
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    text = (
        f"inputs:\n  - {{path: {tmp_path}/corpus.jsonl, domain: web}}\n"
        f"stages:\n  - {{op: quality_classifier, model: {tmp_path}/q.bin, threshold: 0.999}}\n"
        f"output: {{dir: {tmp_path}/out}}\n"
    )
    recipe = parse_recipe(text)
    out, record = calibrate(recipe, text, [str(tmp_path / "ref.jsonl")], keep=0.9)
    (row,) = record["rules"]
    assert row["param"] == "threshold" and row["before"] == 0.999 and row["after"] < 0.999
    assert row["reference_removed_before"] > 0.5 and row["reference_removed_after"] <= 0.1
    stage = next(s for s in load_recipe_text(out).stages if s.op == "quality_classifier")
    assert stage_params(stage)["threshold"] == row["after"] and stage_params(stage)["domains"] == ["web"]
    from operators.classifier import QualityClassifier

    q = QualityClassifier(stage="q", model=str(tmp_path / "q.bin")).predict(ref)
    assert sum(x < row["after"] for x in q) <= 4  # keeps >= 90% of the reference, measured again


def load_recipe_text(text):
    return parse_recipe(text, check_inputs=False)
