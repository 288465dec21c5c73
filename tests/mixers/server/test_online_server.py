"""Online mixers through a real server: due measurements announced with batches, exact probe counts,
evals from the client, and a restart in the middle of an Aioli round."""

import numpy as np
import pytest
import torch

from mixers.algorithms.base import REPORT_ALIGNMENT, REPORT_EVAL
from mixers.server.engine import MixerConfig
from mixers.server.sampler import exact_counts
from mixers.trainer.client import MixtureStream
from mixers.trainer.utils import alignment_scores, causal_lm_loss, held_out_losses, sequence_losses

AIOLI = MixerConfig(
    seq_len=32,
    global_batch=8,
    seed=5,
    mixer="aioli",
    mixer_params={"lp_rounds": 1, "lp_steps": 2, "update_every": 10, "eta": 5.0},
    feedback_lag=2,
    prefetch=3,
)
N_STEPS = 26


def fake_eval(step: int, domains: list[str]) -> dict[str, float]:
    """Held-out losses that fall fastest for domain 'a' (so Aioli learns to prefer it)."""
    return {d: 6.0 - 0.05 * step * (3 - i) for i, d in enumerate(domains)}


def slow_eval(step: int, domains: list[str]) -> dict[str, float]:
    """fake_eval's shape, falling slowly enough to stay positive over 60 steps."""
    return {d: 6.0 - 0.01 * step * (3 - i) for i, d in enumerate(domains)}


def train(
    location: str, steps: int, state=None, group: int | None = None, evals=fake_eval
) -> tuple[list, MixtureStream]:
    s = MixtureStream(location, prefetch=2, reconnect_timeout=30, group=group)
    if state is not None:
        s.load_state_dict(state)
    got = []
    for b in s:
        got.append((b["step"], b["input_ids"].numpy().copy(), b["domain"].numpy().copy(), b["due"]))
        s.report(b["step"], torch.full((len(b["domain"]),), 3.0), b["domain"])
        if REPORT_EVAL in b["due"]:
            s.report_eval(b["step"], evals(b["step"], s.domains))
        if len(got) == steps:
            break
    return got, s


def test_aioli_through_the_server_probes_exactly_and_learns(serve):
    srv = serve(AIOLI)
    got, s = train(srv.location, N_STEPS)
    state = s.state_dict()["server"]
    s.close()
    assert [g[0] for g in got if g[3]] == [0, 2, 4, 6, 10, 12, 14, 16, 20, 22, 24]
    assert all(g[3] == [REPORT_EVAL] for g in got if g[3])
    probes = [e for e in state["schedule"] if e["reason"].startswith("aioli:probe:")]
    assert [e["step"] for e in probes] == [1, 3, 5, 11, 13, 15, 21, 23, 25] and all(e.get("exact") for e in probes)
    for e in probes:  # each probe step holds exactly the smoothed one-hot counts
        w = np.array([e["weights"][d] for d in sorted(e["weights"])])
        for step in {e["step"], e["step"] + 1} & set(range(N_STEPS)):
            assert np.bincount(got[step][2], minlength=3).tolist() == exact_counts(w, 8).tolist()
    learnt = [e for e in state["schedule"] if e["reason"].startswith("aioli@")]
    # learnt weights apply feedback_lag steps after a round's last probe eval; until then the previous ones
    assert [(e["step"], e["reason"]) for e in learnt] == [(8, "aioli@6"), (17, "aioli@6"), (18, "aioli@16")]
    assert [e["reason"] for e in state["schedule"] if e["step"] == 7] == ["aioli:init"]
    assert learnt[-1]["weights"]["a"] > learnt[-1]["weights"]["b"] > learnt[-1]["weights"]["c"]
    assert state["mixer"]["state"]["rounds_done"] == 2


def test_aioli_state_survives_a_restart_mid_round(serve):
    ref, s = train(serve(AIOLI).location, N_STEPS)
    ref_state = s.state_dict()["server"]
    s.close()
    for kill in (4, 13):  # inside LearnParams of round 0, inside round 1's probes
        first = serve(AIOLI)
        head, s = train(first.location, kill)
        state = s.state_dict()
        s.close()
        first.close()
        tail, s2 = train(serve(AIOLI, state=state["server"]).location, N_STEPS - kill, state=state)
        end = s2.state_dict()["server"]
        s2.close()
        both = head + tail
        assert [g[0] for g in both] == list(range(N_STEPS))
        for a, b in zip(both, ref):
            assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]
        assert end["schedule"] == ref_state["schedule"] and end["mixer"] == ref_state["mixer"]


def test_aioli_plans_by_the_servers_total_steps_and_a_resumed_server_keeps_the_plan(serve):
    """total_steps 60, probe_fraction 0.2, 2-step segments: a third (20 steps) on the initial weights, then
    two rounds of 20 steps whose LearnParams are steps 20-25 and 40-45; a server resumed mid-round without
    total_steps in its own config plans by the state's."""
    planned = MixerConfig(
        seq_len=32, global_batch=8, seed=5, mixer="aioli", mixer_params={"lp_steps": 2, "probe_fraction": 0.2},
        feedback_lag=2, prefetch=3, total_steps=60,
    )  # fmt: skip
    ref, s = train(serve(planned).location, 60, evals=slow_eval)
    whole = s.state_dict()["server"]
    s.close()
    probes = [e["step"] for e in whole["schedule"] if e["reason"].startswith("aioli:probe:")]
    assert probes == [20, 22, 24, 40, 42, 44] and whole["config"]["total_steps"] == 60
    assert [g[0] for g in ref if g[3]] == [19, 21, 23, 25, 39, 41, 43, 45]
    assert whole["mixer"]["state"]["rounds_done"] == 2
    first = serve(planned)
    head, s = train(first.location, 23, evals=slow_eval)
    state = s.state_dict()
    s.close()
    first.close()
    unplanned = MixerConfig(seq_len=32, global_batch=8, seed=5, mixer="aioli", mixer_params=planned.mixer_params)
    tail, s2 = train(serve(unplanned, state=state["server"]).location, 37, state=state, evals=slow_eval)
    end = s2.state_dict()["server"]
    s2.close()
    assert all(np.array_equal(a[1], b[1]) and a[3] == b[3] for a, b in zip(ref, head + tail, strict=True))
    assert end["schedule"] == whole["schedule"] and end["mixer"] == whole["mixer"]


def test_dga_announces_alignment_and_run_eval_reports_held_out_losses(serve):
    cfg = MixerConfig(seq_len=32, global_batch=8, mixer="dga", mixer_params={"every": 3}, feedback_lag=1)
    srv = serve(cfg)
    s = MixtureStream(srv.location, prefetch=1)
    model = TinyLM()
    seen = []
    for b in s:
        seen.append(b["due"])
        if REPORT_ALIGNMENT in b["due"]:
            by_domain = {d: s.held_out(d, 4, 4)[0] for d in s.domains}
            scores = alignment_scores(model, small_vocab_loss, by_domain, by_domain["a"])
            s.report_alignment(b["step"], scores)
        if b["step"] == 5:
            break
    losses = s.run_eval(5, model, small_vocab_loss, max_sequences=8)
    status = s.status()
    s.close()
    assert seen == [[], [], [REPORT_ALIGNMENT], [], [], [REPORT_ALIGNMENT]]
    assert set(losses) == {"a", "b", "c"} and all(np.isfinite(v) for v in losses.values())
    assert status["eval_loss"] == pytest.approx(losses)
    assert status["schedule_entries"] >= 2  # the alignment at step 2 moved the weights from step 3 on


class TinyLM(torch.nn.Module):
    """Embedding → linear over token ids modulo ``vocab``: enough to have real gradients."""

    def __init__(self, vocab: int = 64, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vocab = vocab
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.out(self.emb(ids % self.vocab))


def small_vocab_loss(model: TinyLM, batch) -> torch.Tensor:
    """causal_lm_loss with the test run's token ids (up to ~500k) folded into the tiny vocabulary."""
    labels = batch["labels"]
    labels = torch.where(labels >= 0, labels % model.vocab, labels)
    return sequence_losses(model(batch["input_ids"]), labels)


def test_alignment_scores_are_gradient_dot_products():
    model = TinyLM(vocab=50, dim=4)
    batches = {d: {"input_ids": torch.randint(0, 50, (3, 6)), "labels": torch.randint(0, 50, (3, 6))} for d in "xy"}
    target = {"input_ids": torch.randint(0, 50, (3, 6)), "labels": torch.randint(0, 50, (3, 6))}
    scores = alignment_scores(model, causal_lm_loss, batches, target)

    def flat_grad(batch):
        model.zero_grad()
        causal_lm_loss(model, batch).mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    g_t = flat_grad(target)
    for d, b in batches.items():
        assert scores[d] == pytest.approx(float(flat_grad(b) @ g_t), rel=1e-5)
    assert scores["x"] != scores["y"]
    assert alignment_scores(model, causal_lm_loss, {"t": target}, target)["t"] == pytest.approx(float(g_t @ g_t))


def test_sequence_and_held_out_losses_skip_ignored_positions():
    logits = torch.zeros(2, 4, 5)  # uniform predictions: every counted token costs ln 5
    labels = torch.tensor([[1, 2, 3, 4], [1, 2, -100, -100]])
    assert sequence_losses(logits, labels) == pytest.approx(torch.full((2,), float(np.log(5))))
    model = TinyLM(vocab=10, dim=2)
    torch.nn.init.zeros_(model.out.weight)
    torch.nn.init.zeros_(model.out.bias)
    batch = {"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]), "labels": torch.tensor([[1, 2, 3], [4, -100, -100]])}
    assert held_out_losses(model, {"d": [batch]}) == pytest.approx({"d": float(np.log(10))})


def test_grouped_messages_never_wait_for_steps_that_need_the_trainers_feedback(serve):
    """Messages of up to 5 steps with a feedback lag of 2: the server adds only the steps already made,
    so the trainer's evals keep the mixer going, and every step, weight and `due` is as with one step a message."""
    one, s1 = train(serve(AIOLI).location, N_STEPS, group=1)
    five, s5 = train(serve(AIOLI).location, N_STEPS, group=5)
    assert [g[0] for g in five] == list(range(N_STEPS))
    for a, b in zip(one, five, strict=True):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]
    assert s1.state_dict()["server"]["schedule"] == s5.state_dict()["server"]["schedule"]
    s1.close()
    s5.close()


def _power_law_train(location: str, steps: int, state=None) -> tuple[list, MixtureStream]:
    """Report training losses that fall like power laws, fastest for 'a' (so ADO prefers it)."""
    s = MixtureStream(location, prefetch=2, reconnect_timeout=30)
    if state is not None:
        s.load_state_dict(state)
    speed = {"a": 0.5, "b": 0.2, "c": 0.05}
    got = []
    for b in s:
        names = [s.domains[i] for i in b["domain"].tolist()]
        loss = torch.tensor([2.0 + 3.0 * (1 + b["step"]) ** -speed[d] for d in names])
        s.report(b["step"], loss, b["domain"])
        got.append((b["step"], b["domain"].numpy().copy()))
        if len(got) == steps:
            break
    return got, s


@pytest.mark.parametrize(
    "mixer, params",
    [
        ("ado", {"warmup": 6, "update_every": 4, "gamma": 0.0}),
        ("schedule", {"phases": [[0, "a=1,b=1,c=1"], [9, "a=0.8,b=0.1,c=0.1"], [17, "c=1"]]}),
    ],
)
def test_ado_and_schedules_survive_a_restart_mid_run(serve, mixer, params):
    config = MixerConfig(
        seq_len=32, global_batch=8, seed=3, mixer=mixer, mixer_params=params, feedback_lag=2, prefetch=3
    )
    ref, s = _power_law_train(serve(config).location, 24)
    whole = s.state_dict()["server"]
    s.close()
    first = serve(config)
    head, s = _power_law_train(first.location, 11)
    state = s.state_dict()
    s.close()
    first.close()
    tail, s2 = _power_law_train(serve(config, state=state["server"]).location, 13, state=state)
    end = s2.state_dict()["server"]
    s2.close()
    assert [g[0] for g in head + tail] == list(range(24))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ref, head + tail))  # the same batches
    assert end["schedule"] == whole["schedule"] and end["mixer"] == whole["mixer"]
    reasons = [e["reason"] for e in whole["schedule"]]
    if mixer == "ado":
        assert any(r.startswith("ado@") for r in reasons)
        last = [e for e in whole["schedule"] if e["reason"].startswith("ado@")][-1]["weights"]
        assert last["a"] > last["b"] > last["c"]
    else:
        assert [e["step"] for e in whole["schedule"] if e["reason"].startswith("schedule:")] == [9, 17]
        assert all(d == 2 for d in ref[20][1].tolist())  # phase 2 serves only c
