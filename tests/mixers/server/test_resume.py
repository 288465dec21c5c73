"""Resume: a server restarted from a checkpoint serves exactly what an uninterrupted one would, with a
feedback-driven mixer; a client rides through a server restart."""

import shutil
import socket
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixers.algorithms.base import REPORT, MixingAlgorithm, register
from mixers.server.engine import MixerConfig
from mixers.trainer.client import MixtureStream

N_STEPS = 18


@register("test_follow_loss")
class FollowLoss(MixingAlgorithm):
    """Every ``every`` steps, move weight towards domains with high training loss (a toy ODM)."""

    feedback_kinds: ClassVar[frozenset[str]] = frozenset({REPORT})

    def __init__(self, domains, *, token_counts, every: int = 3, eta: float = 0.7) -> None:
        super().__init__(domains, token_counts=token_counts)
        self.every, self.eta = every, eta
        self.logw = dict.fromkeys(self.domains, 0.0)
        self.updates = 0

    def weights(self):
        z = sum(np.exp(v) for v in self.logw.values())
        return {d: float(np.exp(v) / z) for d, v in self.logw.items()}

    def needs(self, step):
        return frozenset({REPORT}) if step % self.every == 0 else frozenset()

    def update(self, feedback):
        for d, loss in feedback.train_loss().items():
            self.logw[d] += self.eta * loss
        self.updates += 1
        return self.weights()

    def state_dict(self):
        return {**super().state_dict(), "logw": dict(self.logw), "updates": self.updates}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.logw = dict(state["logw"])
        self.updates = state.get("updates", 0)


CONFIG = MixerConfig(seq_len=32, global_batch=8, seed=2, mixer="test_follow_loss", feedback_lag=2, prefetch=3)


def fake_losses(input_ids: torch.Tensor) -> torch.Tensor:
    """A deterministic 'loss' per sequence, from its content."""
    return (input_ids.sum(dim=1) % 1000).double() / 250.0


def train(location, steps, state=None, stream=None):
    """Consume and report ``steps`` batches; return them and the stream's state after the last."""
    s = stream or MixtureStream(location, rank=0, world_size=1, prefetch=2, reconnect_timeout=30)
    if state is not None:
        s.load_state_dict(state)
    got = []
    for b in s:
        got.append((b["step"], b["input_ids"].numpy().copy(), b["domain"].numpy().copy()))
        s.report(b["step"], fake_losses(b["input_ids"]), b["domain"])
        if len(got) == steps:
            break
    return got, s


@pytest.fixture(scope="module")
def reference(run_dir):
    from mixers.server.flight import start_server

    srv = start_server(str(run_dir[0]), CONFIG, log_every=0)
    try:
        got, s = train(srv.location, N_STEPS)
        state = s.state_dict()
        s.close()
    finally:
        srv.close()
    assert len(state["server"]["schedule"]) > 2  # the weights did move
    return got, state


def _same(a, b):
    assert [x[0] for x in a] == [x[0] for x in b]
    for (_, ta, da), (_, tb, db) in zip(a, b):
        assert np.array_equal(ta, tb) and np.array_equal(da, db)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kill=st.integers(min_value=0, max_value=N_STEPS - 1))
def test_restart_from_checkpoint_equals_uninterrupted(serve, reference, kill):
    ref, ref_state = reference
    first = serve(CONFIG)
    head, s = train(first.location, kill) if kill else ([], MixtureStream(first.location))
    state = s.state_dict()
    s.close()
    first.close()
    second = serve(CONFIG, state=state["server"])
    tail, s2 = train(second.location, N_STEPS - kill, state=state)
    end = s2.state_dict()
    s2.close()
    _same(head + tail, ref)
    assert end["server"]["schedule"] == ref_state["server"]["schedule"]
    assert end["server"]["mixer"] == ref_state["server"]["mixer"]
    assert end["server"]["cursors"] == ref_state["server"]["cursors"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_reconnects_across_a_server_restart(serve, reference):
    """The server dies mid-stream, three steps after the state an operator restarts it from; the same
    stream reconnects, re-sends the feedback the new server lacks, and the batches equal the reference."""
    ref, _ = reference
    port = _free_port()
    first = serve(CONFIG, port=port)
    s = MixtureStream(first.location, prefetch=2, reconnect_timeout=30)
    got, state = [], None
    for b in s:
        got.append((b["step"], b["input_ids"].numpy().copy(), b["domain"].numpy().copy()))
        s.report(b["step"], fake_losses(b["input_ids"]), b["domain"])
        if b["step"] == 4:
            state = s.state_dict()
        if b["step"] == 7:
            first.close()
            serve(CONFIG, port=port, state=state["server"])
        if len(got) == N_STEPS:
            break
    s.close()
    assert state["next_step"] == 5
    _same(got, ref)


def test_resume_refuses_a_state_from_other_data(serve, run_dir, tmp_path):
    from mixers.server.flight import start_server
    from tests.mixers.conftest import make_run

    srv = serve(CONFIG)
    s = MixtureStream(srv.location)
    state = s.state_dict()
    s.close()
    other = tmp_path / "other"
    make_run(other, docs={"a": 20, "b": 20, "c": 20}, seed=9)
    with pytest.raises(ValueError, match="shards changed since the state was taken"):
        start_server(str(other), CONFIG, state=state["server"])
    with pytest.raises(ValueError, match="not a mixer state"):
        start_server(str(run_dir[0]), CONFIG, state={"step": 3})
    # a copy of the run elsewhere resumes; the same documents in another order do not
    moved = tmp_path / "moved"
    shutil.copytree(run_dir[0], moved)
    start_server(str(moved), CONFIG, state=state["server"], log_every=0).close()
    shard = moved / "shards" / "domain=b" / "part-00000.parquet"
    t = pq.read_table(shard)
    pq.write_table(t.take(list(range(t.num_rows))[::-1]), shard, row_group_size=16)
    with pytest.raises(ValueError, match="same token counts, different"):
        start_server(str(moved), CONFIG, state=state["server"])


def test_a_resumed_job_may_change_its_world_size(serve):
    cfg = MixerConfig(seq_len=32, global_batch=8, seed=4)
    first = serve(cfg)
    s = MixtureStream(first.location, rank=0, world_size=1, max_steps=5)
    ref = [b["input_ids"].numpy().copy() for b in s]
    state = s.state_dict()
    s.close()
    assert state["next_step"] == 5 and len(ref) == 5
    second = serve(cfg, state=state["server"])
    halves = []
    for r in (0, 1):
        t = MixtureStream(second.location, rank=r, world_size=2, max_steps=2)
        t.load_state_dict(state)
        halves.append(list(t))
        t.close()
    assert [b["step"] for b in halves[0]] == [5, 6]
    third = serve(cfg)
    whole = MixtureStream(third.location, start_step=0, max_steps=7)
    full = [b["input_ids"].numpy() for b in whole]
    whole.close()
    for k in range(2):
        assert np.array_equal(np.concatenate([halves[0][k]["input_ids"], halves[1][k]["input_ids"]]), full[5 + k])
