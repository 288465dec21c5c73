"""Online mixing algorithms (Aioli, DGA, ODM, DoReMi) against simulated trainers with known mixing laws."""

import json
import logging

import numpy as np
import pytest

from mixers.algorithms import build
from mixers.algorithms.ado import fit_power_law
from mixers.algorithms.aioli import normalize_interactions, probe_matrix, solve_interactions
from mixers.algorithms.base import REPORT, REPORT_EVAL, Feedback
from mixers.server.sampler import exact_counts, place_exact
from mixers.tools.simulate import MixingLaw, SimulatedTrainer, run

D = ["a", "b", "c"]
COUNTS = dict.fromkeys(D, 1000)
STEPS = 1000

# domain a helps every domain; b and c mostly help themselves; c has the highest irreducible loss
TRANSFER = MixingLaw(
    D,
    c=np.array([2.0, 2.5, 3.0]),
    b=np.array([2.0, 2.0, 2.0]),
    a=np.array([[1.0, 0.2, 0.1], [0.6, 0.4, 0.1], [0.6, 0.1, 0.4]]),
    scale=300.0,
)
# equal floors; a starts far above it (high loss = learnable headroom, the premise of ODM and DoReMi)
HEADROOM = MixingLaw(
    D,
    c=np.array([2.0, 2.0, 2.0]),
    b=np.array([3.0, 1.0, 1.0]),
    a=np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]]),
    scale=300.0,
)


def simulate(name, law, seed=0, noise=0.02, target=0, **params):
    algo = build(name, D, COUNTS, **params)
    return algo, run(algo, SimulatedTrainer(law, noise=noise, target=target, seed=seed), STEPS, lag=4, seed=seed)


# ---------------------------------------------------------------- exact counts


@pytest.mark.parametrize(
    ("weights", "batch", "want"),
    [
        ([0.75, 0.125, 0.125], 16, [12, 2, 2]),
        ([0.625, 0.375], 16, [10, 6]),
        ([0.97, 0.01, 0.01, 0.01], 4, [1, 1, 1, 1]),  # max(1, ·) for every live domain
        ([1.0, 0.0, 0.0], 5, [5, 0, 0]),
        ([0.25] * 4, 10, [3, 3, 2, 2]),
    ],
)
def test_exact_counts_fill_the_batch_with_at_least_one_per_live_domain(weights, batch, want):
    counts = exact_counts(np.array(weights), batch)
    assert counts.tolist() == want
    ids = place_exact(7, 3, counts)
    assert np.bincount(ids, minlength=len(weights)).tolist() == want
    assert not np.array_equal(ids, place_exact(7, 4, counts)) or len(set(ids.tolist())) == 1


def test_exact_counts_refuse_more_domains_than_slots():
    with pytest.raises(ValueError, match="do not fit 2 sequences"):
        exact_counts(np.array([0.4, 0.3, 0.3]), 2)


# ---------------------------------------------------------------- Aioli


def small_aioli(**kw):
    params = {"lp_rounds": 1, "lp_steps": 2, "update_every": 10, "warmup": 1, "eta": 1.0, "one_hot_factor": 0.6}
    return build("aioli", D, COUNTS, **{**params, **kw})


def test_aioli_timetable_probes_each_domain_and_asks_for_evals_at_segment_bounds():
    algo = small_aioli()
    # warmup step 0; round 0 = steps 1..10: probes 1-2, 3-4, 5-6; training 7-10
    assert algo.plan(0) is None
    probes = [algo.plan(t) for t in range(1, 7)]
    assert all(p.exact and p.reason.startswith("aioli:probe:") for p in probes)
    probed = [max(p.weights, key=p.weights.get) for p in probes[::2]]
    assert sorted(probed) == D and probes[0].weights == probes[1].weights
    assert probes[0].weights[probed[0]] == pytest.approx(0.6) and sum(probes[0].weights.values()) == pytest.approx(1)
    assert not algo.plan(7).exact and algo.plan(7).weights == pytest.approx(dict.fromkeys(D, 1 / 3))
    due = [t for t in range(0, 25) if algo.needs(t)]
    assert due == [0, 2, 4, 6, 10, 12, 14, 16, 20, 22, 24]
    assert algo.needs(0) == frozenset({REPORT_EVAL})
    assert algo.probe_order(0) != algo.probe_order(1) or algo.probe_order(1) != algo.probe_order(2)


def test_aioli_recovers_the_interaction_matrix_of_a_linear_law():
    """If each step on mixture p lowers loss i by (A p)_i, LearnParams estimates A·lp_steps exactly."""
    a = np.array([[0.05, 0.01, 0.0], [0.02, 0.04, 0.0], [0.03, 0.0, 0.06]])
    algo = small_aioli(normalize=False, ema=None, eta=0.5)
    loss = np.array([5.0, 5.0, 5.0])
    for t in range(11):
        p = algo.plan(t)
        w = np.array([p.weights[d] for d in D]) if p else np.full(3, 1 / 3)
        loss = loss - a @ w
        if REPORT_EVAL in algo.needs(t):
            algo.update(Feedback(step=t, eval_loss=dict(zip(D, loss.tolist()))))
    assert algo.rounds_done == 1 and algo.updated_at == 6
    assert np.array(algo.last_a) == pytest.approx(a * 2, abs=1e-9)
    want = np.exp(0.5 * (a * 2).sum(axis=0))
    assert np.array(list(algo.weights().values())) == pytest.approx(want / want.sum())


def test_aioli_math_helpers():
    w = probe_matrix(3, 0.6)
    assert w.sum(axis=1) == pytest.approx(np.ones(3)) and w[1, 1] == pytest.approx(0.6)
    a = np.array([[1.0, -0.5], [0.25, 0.5]])
    gain = a @ probe_matrix(2, 0.75).T
    assert solve_interactions(gain, 0.75) == pytest.approx(a)
    n = normalize_interactions(a)
    assert n.min() == 0 and n.sum() == pytest.approx(1)


def test_aioli_beats_stratified_and_moves_toward_the_optimum():
    best = TRANSFER.best_static(STEPS)
    assert best[0] > 0.8  # the law's optimum leans on the domain that helps all
    _, strat = simulate("stratified", TRANSFER, noise=0.0)
    algo, aioli = simulate("aioli", TRANSFER, noise=0.0)
    assert algo.rounds_done >= 3 and algo.skipped == 0
    assert aioli.average_loss < strat.average_loss - 0.04
    final = aioli.weights[-1]
    assert final.argmax() == 0 and np.abs(final - best).sum() < np.abs(np.full(3, 1 / 3) - best).sum()


def test_aioli_beats_stratified_with_noisy_evals():
    for seed in (0, 1, 2):
        _, strat = simulate("stratified", TRANSFER, seed, noise=0.02)
        _, aioli = simulate("aioli", TRANSFER, seed, noise=0.02)
        assert aioli.average_loss < strat.average_loss - 0.01


def test_aioli_missing_eval_leaves_weights_unchanged_for_that_round(caplog):
    algo = small_aioli()
    before = algo.weights()
    with caplog.at_level(logging.WARNING, logger="mixers.algorithms.base"):
        for t in (0, 2, 4, 6):
            losses = {"a": 5.0 - t * 0.1, "b": 5.0}  # `c` never measured
            algo.update(Feedback(step=t, eval_loss=losses))
    assert algo.weights() == before and algo.rounds_done == 0
    assert algo.skipped == 4 and "no loss for ['c']" in caplog.text
    assert algo.last_skip == {
        "step": 6,
        "reason": "report_eval has no loss for ['c']; round 0 will not update the weights",
    }
    # a round whose probe evals were complete still learns
    for t in (10, 12, 14, 16):
        algo.update(Feedback(step=t, eval_loss={"a": 5.0 - t * 0.1, "b": 5.0, "c": 5.0 - t * 0.05}))
    assert algo.rounds_done == 1 and algo.weights() != before


def test_aioli_rejects_bad_settings():
    with pytest.raises(ValueError, match="longer than its LearnParams phase"):
        build("aioli", D, COUNTS, lp_rounds=2, lp_steps=10, update_every=60)
    with pytest.raises(ValueError, match=r"one_hot_factor.*\(1/k, 1\]"):
        build("aioli", D, COUNTS, one_hot_factor=0.2)
    with pytest.raises(ValueError, match=r"probes every domain, but \['c'\]"):
        build("aioli", D, {**COUNTS, "c": 0})
    with pytest.raises(ValueError, match=r"aioli: `ema` must be a finite number in \[0.0, 1.0\)"):
        build("aioli", D, COUNTS, ema=1.5)


def probed(algo, steps):
    """Steps whose planned mixture is a probe (exact counts)."""
    return [t for t in range(steps) if (p := algo.plan(t)) is not None and p.exact]


def test_aioli_plans_its_probe_budget_by_the_run_length():
    d4 = ["a", "b", "c", "d"]
    counts = dict.fromkeys(d4, 1000)
    # the benchmark's setting (4 domains, 300 steps): a third on the initial weights, one round whose
    # LearnParams is 7 steps per domain (28 <= 10% of the run), then the learnt weights to the end
    algo = build("aioli", d4, counts, total_steps=300)
    assert (algo.warmup, algo.lp_rounds, algo.lp_steps, algo.update_every, algo.rounds) == (100, 1, 7, 200, 1)
    assert probed(algo, 300) == list(range(100, 128))
    assert [t for t in range(300) if algo.needs(t)] == [99, 106, 113, 120, 127]
    assert algo.eta == 4.0  # η = k with a normalised A
    # 2,000 steps: reference-length segments (10 steps), as many rounds as 10% pays for, evenly spread
    algo = build("aioli", d4, counts, total_steps=2000)
    assert (algo.warmup, algo.lp_steps, algo.update_every, algo.rounds) == (667, 10, 266, 5)
    steps = probed(algo, 2000)
    assert len(steps) == 200 and steps[0] == 667 and steps[-1] == 667 + 4 * 266 + 39
    # the reference timetable (no total_steps) probes from step 1 and spends 40% of each round on it at k = 4
    ref = build("aioli", d4, counts)
    assert probed(ref, 400) == list(range(1, 81)) + list(range(201, 281)) and ref.eta == 4.0
    # given settings stay; a round that would not end by total_steps does not start
    algo = build("aioli", D, COUNTS, total_steps=100, lp_rounds=1, lp_steps=2, update_every=30)
    assert algo.warmup == 33 and algo.rounds == 2
    assert probed(algo, 100) == list(range(33, 39)) + list(range(63, 69))
    assert not any(algo.needs(t) for t in range(69, 100))


def test_aioli_refuses_a_run_too_short_for_its_budget():
    with pytest.raises(ValueError, match=r"a probe budget of 2 steps .* cannot probe each of the 3 domains once"):
        build("aioli", D, COUNTS, total_steps=20)
    with pytest.raises(ValueError, match=r"no round of 200 steps \(`update_every`\) fits in `total_steps` 150"):
        build("aioli", D, COUNTS, total_steps=150, update_every=200)
    with pytest.raises(
        ValueError, match=r"no round of 2 steps \(`update_every`\) fits in `total_steps` 300 after `warmup` 300"
    ):
        build("aioli", D, COUNTS, total_steps=300, warmup=300)
    assert build("aioli", D, COUNTS, total_steps=20, lp_steps=1).probe_steps == 3


def test_aioli_with_a_planned_budget_beats_stratified_and_the_reference_timetable_on_a_simulated_law():
    """TRANSFER (the optimum puts 0.92 on a), 1,000 steps, noisy evals: the planned timetable (90 probe
    steps from step 333, η = 3) gains more over stratified than the reference one (300 from step 1, η = 1)."""
    ref = {"lp_rounds": 2, "lp_steps": 10, "update_every": 200, "eta": 1.0}
    for seed in (0, 1, 2):
        _, strat = simulate("stratified", TRANSFER, seed, noise=0.02)
        _, old = simulate("aioli", TRANSFER, seed, noise=0.02, **ref)
        algo = build("aioli", D, COUNTS, total_steps=STEPS, seed=seed)
        trace = run(algo, SimulatedTrainer(TRANSFER, noise=0.02, seed=seed), STEPS, lag=4, seed=seed)
        assert len(probed(algo, STEPS)) == 90 and algo.rounds_done == algo.rounds == 3
        assert trace.average_loss < strat.average_loss - 0.03 and trace.average_loss < old.average_loss


# ---------------------------------------------------------------- DGA


def test_dga_moves_weight_to_the_domain_aligned_with_the_target_and_lowers_its_loss():
    target = 2  # c: training on a lowers c's loss most (A[c] = 0.6, 0.1, 0.4)
    for seed in (0, 1, 2):
        _, strat = simulate("stratified", TRANSFER, seed, target=target)
        algo, dga = simulate("dga", TRANSFER, seed, target=target)
        assert algo.updates == STEPS // 10 - 1
        assert dga.weights[-1].argmax() == 0 and dga.weights[-1][0] > 0.6
        assert dga.final_losses[target] < strat.final_losses[target] - 0.1


def test_dga_asks_every_t_r_steps_and_ignores_incomplete_alignments():
    algo = build("dga", D, COUNTS, every=5)
    assert [t for t in range(12) if algo.needs(t)] == [4, 9]
    before = algo.weights()
    assert algo.update(Feedback(step=4, alignment={"a": 1.0, "b": 0.0})) is None
    assert algo.update(Feedback(step=9, alignment=dict.fromkeys(D, 0.0))) is None
    assert algo.weights() == before and algo.skipped == 2
    new = algo.update(Feedback(step=14, alignment={"a": 2.0, "b": -1.0, "c": 0.0}))
    assert new["a"] > new["c"] > new["b"] and sum(new.values()) == pytest.approx(1)


# ---------------------------------------------------------------- ODM and DoReMi


@pytest.mark.parametrize("variant", ["exp3", "smoothed_mean"])
def test_odm_samples_the_high_loss_domain_more_and_does_not_lose_to_stratified(variant):
    for seed in (0, 1, 2):
        _, strat = simulate("stratified", HEADROOM, seed)
        algo, odm = simulate("odm", HEADROOM, seed, variant=variant)
        mean_w = np.mean(odm.weights, axis=0)
        assert algo.t == STEPS - 4 and mean_w.argmax() == 0
        assert odm.average_loss < strat.average_loss
        assert min(w.min() for w in odm.weights) > 0  # the ε floor keeps every domain sampled


def test_doremi_upweights_excess_loss_and_beats_stratified():
    for seed in (0, 1, 2):
        _, strat = simulate("stratified", HEADROOM, seed)
        algo, doremi = simulate("doremi", HEADROOM, seed)
        assert np.mean(doremi.weights, axis=0).argmax() == 0
        assert doremi.average_loss < strat.average_loss
        assert max(algo.average().values()) == algo.average()["a"]


def test_loss_driven_mixers_skip_unusable_reports(caplog):
    odm, doremi = build("odm", D, COUNTS), build("doremi", D, COUNTS)
    before_o, before_d = odm.weights(), doremi.weights()
    with caplog.at_level(logging.WARNING, logger="mixers.algorithms.base"):
        assert odm.update(Feedback(step=0, loss_sum={}, tokens={})) is None
        no_ref = Feedback(step=0, loss_sum={"a": 10.0}, tokens={"a": 4})
        assert doremi.update(no_ref) is None
    assert odm.weights() == before_o and doremi.weights() == before_d
    assert "no ref_loss_sum" in caplog.text and odm.needs(3) == doremi.needs(3) == frozenset({REPORT})


# ---------------------------------------------------------------- state


@pytest.mark.parametrize(
    ("name", "params", "law"),
    [
        ("aioli", {"lp_rounds": 1, "lp_steps": 3, "update_every": 20}, TRANSFER),
        ("dga", {"every": 3}, TRANSFER),
        ("odm", {}, HEADROOM),
        ("odm", {"variant": "smoothed_mean"}, HEADROOM),
        ("doremi", {}, HEADROOM),
    ],
)
def test_state_round_trip_mid_round_continues_identically(name, params, law):
    """Stop at a step inside a round, restore the JSON state into a fresh algorithm, feed both the same
    feedback: every later plan and weight is the same."""
    trainer = SimulatedTrainer(law, noise=0.05, target=1, seed=3)
    feed = run(build(name, D, COUNTS, **params), trainer, 80, lag=2)
    assert len(feed.weights) == 80
    a = build(name, D, COUNTS, **params)
    b = build(name, D, COUNTS, **params)
    for step in range(80):
        for algo in (a, b) if step >= 37 else (a,):
            if kinds := algo.needs(step):
                algo.update(trainer.measured[step].only(kinds))
        if step == 36:
            b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        if step >= 37:
            assert a.weights() == b.weights() and a.plan(step + 1) == b.plan(step + 1)
            assert a.state_dict() == b.state_dict()


# ---------------------------------------------------------------- ADO and schedules


def test_ado_power_law_fit_recovers_a_known_curve():
    n = np.linspace(1e4, 1e6, 60)
    eps, beta, alpha = fit_power_law(n, 2.0 + 30.0 * n**-0.3)
    assert beta == pytest.approx(30.0, rel=0.5)
    assert alpha == pytest.approx(0.3, abs=0.05) and eps == pytest.approx(2.0, abs=0.3)


def test_ado_beats_stratified_on_simulated_laws():
    for seed in (0, 1, 2):
        for law, margin in ((HEADROOM, 0.02), (TRANSFER, 0.005)):
            _, strat = simulate("stratified", law, seed, noise=0.02)
            algo, ado = simulate("ado", law, seed, noise=0.02, warmup=50, update_every=25)
            assert algo.skipped == 0 and algo.last_speed is not None
            assert ado.average_loss < strat.average_loss - margin
    algo, _ = simulate("ado", HEADROOM, 0, noise=0.02, warmup=50, update_every=25)
    w = algo.weights()
    assert w["a"] > w["b"] and w["a"] > w["c"]  # the domain with headroom learns fastest


def test_ado_and_schedule_reject_bad_settings():
    with pytest.raises(ValueError, match="ado: `prior` must be 'tokens' or 'uniform'"):
        build("ado", D, COUNTS, prior="zipf")
    with pytest.raises(ValueError, match="phase starts must begin at 0 and increase"):
        build("schedule", D, COUNTS, phases=[[5, "a=1"], [2, "b=1"]])
    with pytest.raises(ValueError, match=r"phases\[0\] must be \[start_step, weights\]"):
        build("schedule", D, COUNTS, phases=[[True, "a=1"]])


def test_schedule_is_a_pure_function_of_the_step():
    algo = build("schedule", D, COUNTS, phases='[[0, "a=1,b=1"], [100, {"c": 1}]]')
    assert algo.plan(0).weights == {"a": 0.5, "b": 0.5, "c": 0.0} and algo.plan(99).reason == "schedule:phase0"
    assert algo.plan(100).weights == {"a": 0.0, "b": 0.0, "c": 1.0} and algo.plan(10**6).reason == "schedule:phase1"
