"""Per-domain epoch caps: a capped domain stops being served at exactly its cap, the others take its
share, a restart anywhere serves the same batches, and runs the caps cannot serve are refused at start."""

import math

import numpy as np
import pytest
import torch

from mixers.server.caps import check_budget, limits, max_steps, parse_caps
from mixers.server.corpus import Corpus
from mixers.server.engine import MixerConfig
from mixers.server.sampler import PackedStream, slot_domains
from mixers.server.state import check_state
from mixers.trainer.client import MixtureStream

N_STEPS = 40
DOMAINS = ["a", "b", "c"]
# mixer -> (params, the capped domain, its cap in epochs): stratified reaches c's cap, ADO that of a,
# the domain it moves weight to
CASES = {
    "stratified": ({}, "c", 0.5),
    "ado": ({"warmup": 6, "update_every": 4, "gamma": 0.0}, "a", 0.3),
}


def config(mixer="stratified", params=None, **kw):
    return MixerConfig(
        seq_len=32, global_batch=8, seed=7, mixer=mixer, mixer_params=params or {}, feedback_lag=2, prefetch=3, **kw
    )


def fake_loss(step, names):
    """Training losses that fall like power laws, fastest for 'a' (so ADO moves weight to it)."""
    speed = {"a": 0.5, "b": 0.2, "c": 0.05}
    return torch.tensor([2.0 + 3.0 * (1 + step) ** -speed[d] for d in names])


def train(location, steps, state=None):
    """Consume and report ``steps`` batches: [(step, tokens, domain ids)] and the stream."""
    s = MixtureStream(location, prefetch=2, reconnect_timeout=30)
    if state is not None:
        s.load_state_dict(state)
    got = []
    for b in s:
        got.append((b["step"], b["input_ids"].numpy().copy(), b["domain"].numpy().copy()))
        s.report(b["step"], fake_loss(b["step"], [s.domains[i] for i in b["domain"].tolist()]), b["domain"])
        if len(got) == steps:
            break
    return got, s


# ---------------------------------------------------------------- the sampler


def test_slots_past_the_room_are_drawn_again_from_the_domains_with_room():
    w = np.array([0.2, 0.3, 0.5])
    for step in range(50):
        free = slot_domains(3, step, 16, w)
        room = np.array([100, 2, 0])
        capped = slot_domains(3, step, 16, w, room=room)
        counts = np.bincount(capped, minlength=3)
        assert counts[2] == 0 and counts[1] <= 2 and counts.sum() == 16
        # b keeps its first slots; slots that had room keep their domain
        kept_b = np.flatnonzero(free == 1)[:2]
        assert (capped[kept_b] == 1).all() and (capped[free == 0] == 0).all()
        assert np.array_equal(capped, slot_domains(3, step, 16, w, room=room))  # a pure function
    exact = slot_domains(3, 9, 8, np.array([0.75, 0.125, 0.125]), exact=True, room=np.array([3, 100, 100]))
    assert np.bincount(exact, minlength=3)[0] == 3
    with pytest.raises(ValueError, match="every domain with weight > 0 has reached its epoch cap"):
        slot_domains(3, 0, 8, np.array([0.5, 0.5, 0.0]), room=np.array([2, 3, 100]))


def test_cap_arithmetic_and_parsing():
    tokens = {"a": 1000, "b": 330, "c": 0}
    assert limits({"b": 2.0}, ["a", "b", "c"], tokens, 32).tolist()[1] == math.floor(2 * 330 / 32)
    assert max_steps({"a": 1.0}, ["a", "b", "c"], tokens, 32, 4) is None  # b is uncapped: no bound
    assert max_steps({"a": 1.0, "b": 2.0}, ["a", "b", "c"], tokens, 32, 4) == (31 + 20) // 4
    check_budget({"a": 1.0, "b": 2.0}, ["a", "b", "c"], tokens, 32, 4, 12)
    with pytest.raises(ValueError, match=r"epoch_caps: the caps allow at most 12 steps .*total_steps is 13"):
        check_budget({"a": 1.0, "b": 2.0}, ["a", "b", "c"], tokens, 32, 4, 13)
    assert parse_caps(["code=2", " web = 0.5"]) == {"code": 2.0, "web": 0.5}
    for bad in ("code", "=2", "code=two"):
        with pytest.raises(ValueError, match="--epoch-cap: expected DOMAIN=EPOCHS"):
            parse_caps([bad])


# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def reference(run_dir):
    """Uncapped and capped runs of N_STEPS steps, each for stratified and ADO."""
    from mixers.server.flight import start_server

    out = {}
    for mixer, (params, domain, cap) in CASES.items():
        for caps in ({}, {domain: cap}):
            srv = start_server(str(run_dir[0]), config(mixer, params, epoch_caps=caps), log_every=0)
            try:
                got, s = train(srv.location, N_STEPS)
                out[mixer, bool(caps)] = (got, s.state_dict(), srv.engine.train_tokens)
                s.close()
            finally:
                srv.close()
    return out


@pytest.mark.parametrize("mixer", ["stratified", "ado"])
def test_a_capped_domain_stops_at_exactly_its_cap(run_dir, reference, mixer):
    _, domain, cap = CASES[mixer]
    k = DOMAINS.index(domain)
    free, _, tokens = reference[mixer, False]
    got, state, _ = reference[mixer, True]
    limit = math.floor(cap * tokens[domain] / 32)
    served = [int((d == k).sum()) for _, _, d in got]
    assert sum(int((d == k).sum()) for _, _, d in free) > limit  # uncapped, the domain gets more than its cap
    assert sum(served) == limit and sum(served) * 32 <= cap * tokens[domain]
    cap_step = int(np.flatnonzero(np.cumsum(served) == limit)[0])
    assert all(n == 0 for n in served[cap_step + 1 :])
    # until the cap binds the batches are the uncapped run's; every batch stays full
    first_diff = next(i for i, (a, b) in enumerate(zip(free, got)) if not np.array_equal(a[2], b[2]))
    assert first_diff in (cap_step, cap_step + 1)  # the step reaching the cap, unless its draws fit exactly
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(free[:cap_step], got[:cap_step]))
    assert all(len(d) == 8 for _, _, d in got)
    # its tokens served are exactly the first `limit` sequences of its stream, in order
    rows = np.concatenate([t[d == k] for _, t, d in got])
    stream = PackedStream(Corpus(str(run_dir[0])), domain, 7)
    assert np.array_equal(rows.reshape(-1), stream.read(0, limit * 32).astype(rows.dtype))
    # the schedule says so, with the others renormalised, and the state records the caps
    server = state["server"]
    entry = next(e for e in server["schedule"] if e["reason"] == f"epoch_cap:{domain}")
    assert entry["step"] == cap_step + 1 and entry["weights"][domain] == 0.0
    assert sum(entry["weights"].values()) == pytest.approx(1.0)
    assert all(e["weights"][domain] == 0.0 for e in server["schedule"] if e["step"] > cap_step)
    assert server["cursors"][domain] == limit and server["config"]["epoch_caps"] == {domain: cap}
    if mixer == "ado":  # ADO kept learning: its later weights were recorded with the domain at 0
        assert any(e["reason"].startswith("ado@") and e["step"] > cap_step for e in server["schedule"])


@pytest.mark.parametrize("mixer", ["stratified", "ado"])
def test_a_capped_run_resumes_anywhere_to_identical_batches(serve, reference, mixer):
    got, whole, _ = reference[mixer, True]
    params, domain, cap = CASES[mixer]
    cfg = config(mixer, params, epoch_caps={domain: cap})
    cap_step = next(e["step"] for e in whole["server"]["schedule"] if e["reason"] == f"epoch_cap:{domain}") - 1
    for kill in (cap_step - 1, cap_step, cap_step + 1, N_STEPS - 5):
        first = serve(cfg)
        head, s = train(first.location, kill)
        state = s.state_dict()
        s.close()
        first.close()
        # the resumed server takes its caps from the state, not from its own config
        second = serve(config(mixer, params), state=state["server"])
        tail, s2 = train(second.location, N_STEPS - kill, state=state)
        end = s2.state_dict()["server"]
        s2.close()
        second.close()
        assert [g[0] for g in head + tail] == list(range(N_STEPS))
        for a, b in zip(got, head + tail, strict=True):
            assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
        assert end["schedule"] == whole["server"]["schedule"] and end["cursors"] == whole["server"]["cursors"]
        assert end["mixer"] == whole["server"]["mixer"]


def test_caps_that_cannot_serve_the_run_are_refused_at_start(run_dir, serve):
    from mixers.server.flight import start_server

    caps = {"a": 0.2, "b": 0.2, "c": 0.2}
    srv = serve(config(epoch_caps=caps))
    most = max_steps(caps, ["a", "b", "c"], srv.engine.train_tokens, 32, 8)
    srv.close()
    want = rf"epoch_caps: the caps allow at most {most} steps.*total_steps is {most + 1}"
    with pytest.raises(ValueError, match=want):
        start_server(str(run_dir[0]), config(epoch_caps=caps, total_steps=most + 1), log_every=0)
    start_server(str(run_dir[0]), config(epoch_caps=caps, total_steps=most), log_every=0).close()
    with pytest.raises(ValueError, match=r"epoch_caps: unknown domain\(s\) \['web'\]"):
        start_server(str(run_dir[0]), config(epoch_caps={"web": 1.0}), log_every=0)
    with pytest.raises(ValueError, match=r"epoch_caps\['a'\]: an epoch cap must be a finite number > 0"):
        start_server(str(run_dir[0]), config(epoch_caps={"a": 0}), log_every=0)


def test_a_run_past_every_cap_fails_with_the_reason(serve):
    """Without total_steps the server cannot refuse up front; it stops at the step the caps run out."""
    caps = {"a": 0.1, "b": 0.1, "c": 0.1}
    srv = serve(config(epoch_caps=caps))
    most = max_steps(caps, ["a", "b", "c"], srv.engine.train_tokens, 32, 8)
    s = MixtureStream(srv.location, prefetch=1, reconnect_timeout=2)
    with pytest.raises(Exception, match="every domain with weight > 0 has reached its epoch cap"):
        for b in s:
            s.report(b["step"], torch.full((8,), 3.0), b["domain"])
    s.close()
    assert srv.engine.failed and "epoch cap" in srv.engine.failed
    assert most <= srv.engine._next <= most + 1


def test_state_with_bad_caps_is_refused(serve):
    srv = serve(config(epoch_caps={"c": 0.5}, total_steps=30))
    s = MixtureStream(srv.location)
    state = s.state_dict()["server"]
    s.close()
    assert state["config"]["epoch_caps"] == {"c": 0.5} and state["config"]["total_steps"] == 30
    check_state(state)
    bad = {**state, "config": {**state["config"], "epoch_caps": {"c": -1}}}
    with pytest.raises(ValueError, match=r"mixer state: config.epoch_caps\['c'\]: an epoch cap must be"):
        check_state(bad)
    bad = {**state, "config": {**state["config"], "total_steps": 0}}
    with pytest.raises(ValueError, match=r"`config.total_steps` must be"):
        check_state(bad)
