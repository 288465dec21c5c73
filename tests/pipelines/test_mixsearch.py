"""sluice mixsearch on a simulated mixing law with a known optimum (mixers/tools/simulate.py)."""

import numpy as np
import pytest

from mixers.tools.simulate import MixingLaw
from pipelines.mixsearch import cap_weights, epoch_caps, mixsearch, sample_mixtures, weights_flag

D = ["a", "b", "c"]
# a transfers to every domain: the best static mixture leans on it
TRANSFER = MixingLaw(
    D,
    c=np.array([2.0, 2.5, 3.0]),
    b=np.array([2.0, 2.0, 2.0]),
    a=np.array([[1.0, 0.2, 0.1], [0.6, 0.4, 0.1], [0.6, 0.1, 0.4]]),
    scale=300.0,
)
STEPS = 600


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_the_optimum_of_a_simulated_law(seed):
    rng = np.random.default_rng(seed)

    def evaluate(w):  # a proxy run's eval loss, with noise as between seeds
        return TRANSFER.average_loss(w, STEPS) + rng.normal(0, 0.002)

    res = mixsearch(D, np.full(3, 1 / 3), evaluate, mixtures=24, seed=seed)
    uniform = TRANSFER.average_loss(np.full(3, 1 / 3), STEPS)
    best = TRANSFER.average_loss(TRANSFER.best_static(STEPS), STEPS)
    got = TRANSFER.average_loss(np.array([res["weights"][d] for d in D]), STEPS)
    assert got < uniform  # better than stratified
    assert got - best < 0.2 * (uniform - best)  # recovers >= 80% of the best static mixture's gain
    assert max(res["held_out_r2"].values()) > 0.8 and res["fit"] in ("loglinear", "boosted")
    assert weights_flag(res["weights"]).startswith("--weights a=")
    assert res["chosen"] == "proposal"  # the law generalises: its proposal beats every sampled mixture


def test_a_law_that_does_not_generalise_returns_the_best_measured_mixture():
    """Pure noise: no fit predicts held-out mixtures; the validated proposal is worse than the best sample."""
    rng = np.random.default_rng(0)
    calls = []

    def evaluate(w):
        calls.append(w)
        return 5.0 + (1.0 if len(calls) == 13 else rng.normal(0, 0.05))  # the 13th call validates the proposal

    res = mixsearch(D, np.full(3, 1 / 3), evaluate, mixtures=12, seed=0)
    assert res["chosen"] == "best_sampled" and res["validated_loss"] > res["best_sampled_loss"]
    best = res["mixtures"][int(np.argmin(res["losses"]))]
    assert res["weights"] == best and res["proposal"] != best


def test_epoch_caps_count_the_target_run_not_the_proxy():
    tokens = np.array([180_000, 150_000, 300_000])
    proxy, target = 600_000, 3_000_000  # a 5x longer target run repeats every domain 5x more
    assert epoch_caps(tokens, 6, proxy).tolist() == [1.0, 1.0, 1.0]
    assert epoch_caps(tokens, 6, target) == pytest.approx([0.36, 0.30, 0.60])


def test_epoch_caps_bound_every_mixture():
    caps = np.array([0.3, 0.6, 0.6])
    w = sample_mixtures(np.array([0.6, 0.2, 0.2]), 50, caps, seed=3)
    assert np.allclose(w.sum(1), 1) and (w <= caps + 1e-9).all()
    res = mixsearch(D, np.full(3, 1 / 3), lambda x: TRANSFER.average_loss(x, STEPS), mixtures=12, caps=caps)
    assert res["weights"]["a"] <= 0.3 + 1e-6  # the law wants more of a than the cap allows
    with pytest.raises(ValueError, match=r"epoch caps allow at most 0\.900"):
        cap_weights(np.full(3, 1 / 3), np.array([0.3, 0.3, 0.3]))
    with pytest.raises(ValueError, match="at least 6 mixtures"):
        mixsearch(D, np.full(3, 1 / 3), lambda x: 0.0, mixtures=3)


def test_cli_trains_proxies_and_prints_weights(tmp_path, ray_session):
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.recipe import parse_recipe
    from pipelines.runner import run
    from tests.conftest import prose, write_jsonl

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"a{i}", "text": prose(i % 5) + f" {i}"} for i in range(30)])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": f"b{i}", "text": prose(i + 9)} for i in range(30)])
    text = (
        f"inputs:\n  - {{path: {tmp_path}/in/a.jsonl, domain: a, id_field: id}}\n"
        f"  - {{path: {tmp_path}/in/b.jsonl, domain: b, id_field: id}}\n"
        f"stages:\n  - {{op: tokenize}}\n  - {{op: split, holdout_fraction: 0.1}}\noutput: {{dir: {tmp_path}/run}}\n"
    )
    run(parse_recipe(text), recipe_text=text)
    write_jsonl(tmp_path / "eval.jsonl", [{"text": prose(i)} for i in range(4)])
    res = CliRunner().invoke(
        app,
        ["mixsearch", str(tmp_path / "run"), "--eval", str(tmp_path / "eval.jsonl"), "--mixtures", "6", "--steps", "2",
         "--global-batch", "2", "--seq-len", "16", "--compact-vocab", "64", "-o", str(tmp_path / "ms")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "--mixer static --weights a=" in res.output
    rec = __import__("json").loads((tmp_path / "ms" / "mixsearch.json").read_text())
    assert len(rec["losses"]) == 6 and abs(sum(rec["weights"].values()) - 1) < 1e-6
