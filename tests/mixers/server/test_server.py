"""The Flight service: weights, rank slices, epochs, feedback and ticket validation, status, eval."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.flight as flight
import pytest
import torch

from mixers.server.engine import MixerConfig
from mixers.trainer.client import MixtureStream
from tests.mixers.conftest import decode, read_steps


def _action(location, kind, body=None, raw=None):
    c = flight.connect(location)
    try:
        payload = raw if raw is not None else json.dumps(body or {}).encode()
        res = list(c.do_action(flight.Action(kind, payload)))
        return json.loads(res[0].body.to_pybytes())
    finally:
        c.close()


def test_weights_are_respected_within_sampling_error(serve):
    weights = {"a": 0.6, "b": 0.3, "c": 0.1}
    srv = serve(MixerConfig(seq_len=16, global_batch=32, mixer="static", mixer_params={"weights": weights}))
    steps = read_steps(srv.location, 0, 1, 0, 150)
    ids = np.concatenate([d for _, _, d in steps])
    n = len(ids)
    for k, (d, p) in enumerate(weights.items()):
        assert abs((ids == k).mean() - p) <= 4.5 * math.sqrt(p * (1 - p) / n), d
    st = _action(srv.location, "status")
    assert st["weights"] == pytest.approx(weights) and st["produced_through"] >= 149
    assert sum(st["tokens_served"].values()) == n * 16


def test_ranks_get_disjoint_slices_that_form_the_global_batch(serve):
    cfg = MixerConfig(seq_len=32, global_batch=8, seed=5)
    whole = read_steps(serve(cfg).location, 0, 1, 0, 12)
    srv = serve(cfg)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda r: read_steps(srv.location, r, 4, 0, 12), range(4)))
    for t in range(12):
        slices = [parts[r][t] for r in range(4)]
        assert all(s[0] == t and s[1].shape == (2, 32) for s in slices)
        assert np.array_equal(np.concatenate([s[1] for s in slices]), whole[t][1])
        assert np.array_equal(np.concatenate([s[2] for s in slices]), whole[t][2])
        served = [tok for s in slices for tok in decode(s[1].reshape(-1)) if tok[1] >= 0]
        assert len(served) == len(set(served))  # no token of a document given to two ranks


def test_one_epoch_serves_every_document_once(serve, run_dir):
    """Follow each domain's sequences (in slot order) through the batches: its first epoch is exactly its
    train documents, each whole and once; no held-out document is ever served."""
    _, truth = run_dir
    L, B = 32, 16
    srv = serve(MixerConfig(seq_len=L, global_batch=B, seed=11, prefetch=16))
    domains = srv.engine.domains
    per_dom: dict[str, list] = {d: [] for d in domains}
    need = {d: sum(len(t) for t in truth["train"][d].values()) for d in domains}
    step = 0
    while any(len(per_dom[d]) * L < need[d] for d in domains):
        for _, toks, ids in read_steps(srv.location, 0, 1, step, 20):
            for row, k in zip(toks, ids):
                per_dom[domains[k]].append(row)
        step += 20
    holdout = {g for d in truth["holdout"].values() for g in d}
    for d in domains:
        stream = np.concatenate(per_dom[d])[: need[d]]
        docs = [g for g, pos in decode(stream) if pos == -1]
        assert sorted(docs) == sorted(truth["train"][d])
        assert np.array_equal(stream, np.concatenate([truth["train"][d][g] for g in docs]))
        assert not holdout & {g for g, _ in decode(np.concatenate(per_dom[d]))}


BAD_FEEDBACK = [
    ("report", {"step": 0, "rank": 0, "world": 1, "loss_sum": {"a": float("nan")}, "tokens": {"a": 3}}, "finite"),
    ("report", {"step": 0, "rank": 0, "world": 1, "loss_sum": {"a": float("inf")}, "tokens": {"a": 3}}, "finite"),
    ("report", {"step": 0, "rank": 0, "world": 1, "loss_sum": {"zz": 1.0}, "tokens": {"zz": 3}}, "unknown domain"),
    ("report", {"step": 0, "rank": 2, "world": 2, "loss_sum": {"a": 1.0}, "tokens": {"a": 3}}, "must be < world"),
    ("report", {"step": 0, "rank": 0, "world": 2, "loss_sum": {"a": 1.0}, "tokens": {"a": 3}}, "differs from"),
    ("report", {"step": 10**7, "rank": 0, "world": 1, "loss_sum": {"a": 1.0}, "tokens": {"a": 3}}, "window"),
    ("report", {"step": -1, "rank": 0, "world": 1, "loss_sum": {"a": 1.0}, "tokens": {"a": 3}}, "must be >= 0"),
    ("report", {"step": 0, "rank": 0, "world": 1, "loss_sum": {"a": 1.0}, "tokens": {"a": 2.5}}, "integer"),
    ("report", {"step": 0, "rank": 0, "world": 1, "loss_sum": {"a": 1.0}, "tokens": {"b": 2}}, "same domains"),
    ("report", {"step": 0, "rank": 0, "world": 1, "loss_sum": {"a": -1.0}, "tokens": {"a": 2}}, ">= 0"),
    ("report", {"step": "0", "rank": 0, "world": 1, "loss_sum": {"a": 1.0}, "tokens": {"a": 2}}, "integer"),
    ("report", {"step": 0, "rank": 0, "world": 1, "loss": {"a": 1.0}}, "unknown field"),
    ("report_eval", {"step": 0, "loss": {"a": "low"}}, "finite number"),
    ("report_eval", {"step": 0, "loss": {}}, "non-empty"),
    ("report_alignment", {"step": 0, "alignment": {"q": 0.1}}, "unknown domain"),
    ("report_alignment", {"step": 0, "alignment": {"a": float("-inf")}}, "finite"),
    ("report_eval", [1, 2], "JSON object"),
    ("launch", {}, "unknown action"),
]


def test_bad_feedback_is_refused_and_the_server_keeps_serving(serve):
    srv = serve()
    first = read_steps(srv.location, 0, 1, 0, 1)
    good = {"step": 0, "rank": 0, "world": 1, "loss_sum": {"a": 2.0}, "tokens": {"a": 4}}
    assert _action(srv.location, "report", good)["ok"]
    for kind, body, msg in [*BAD_FEEDBACK, ("report", good, "already reported")]:
        with pytest.raises(flight.FlightServerError, match=msg):
            _action(srv.location, kind, body)
    with pytest.raises(flight.FlightServerError, match="not valid JSON"):
        _action(srv.location, "report", raw=b"{not json")
    assert _action(srv.location, "report_eval", {"step": 0, "loss": {"b": 1.5}})["ok"]
    assert _action(srv.location, "report_alignment", {"step": 0, "alignment": {"c": -0.25}})["ok"]
    with pytest.raises(flight.FlightServerError, match="already reported"):
        _action(srv.location, "report_eval", {"step": 0, "loss": {"b": 1.0}})
    again = read_steps(srv.location, 0, 1, 0, 3)  # still serving, and the same batch
    assert np.array_equal(again[0][1], first[0][1]) and [s for s, _, _ in again] == [0, 1, 2]
    st = _action(srv.location, "status")
    assert st["train_loss"] == {"a": 0.5} and st["eval_loss"] == {"b": 1.5} and st["failed"] is None


@pytest.mark.parametrize(
    ("ticket", "msg"),
    [
        (b"not json", "not valid JSON"),
        (b'"train"', "expected a JSON object"),
        (json.dumps({"kind": "shuffle"}).encode(), "must be 'train' or 'eval'"),
        (json.dumps({"kind": "train", "rank": 0, "world": 3}).encode(), "divide global_batch 8"),
        (json.dumps({"kind": "train", "rank": 4, "world": 4}).encode(), r"rank 4 must be in \[0, 4\)"),
        (json.dumps({"kind": "train", "rank": 0, "world": 1, "step": -3}).encode(), ">= 0"),
        (json.dumps({"kind": "train", "rank": 0, "world": 1, "step": 10**9}).encode(), "too far ahead"),
        (json.dumps({"kind": "train", "rank": 0, "world": 1, "rnak": 1}).encode(), r"unknown field\(s\) \['rnak'\]"),
        (json.dumps({"kind": "train", "rank": 0, "world": 2}).encode(), "differs from this server's world 1"),
        (json.dumps({"kind": "eval", "domain": "nope"}).encode(), "unknown domain 'nope'"),
        (json.dumps({"kind": "eval", "domain": "a", "batch_size": 0}).encode(), "batch_size"),
    ],
)
def test_bad_tickets_are_refused_and_the_server_keeps_serving(serve, ticket, msg):
    srv = serve()
    read_steps(srv.location, 0, 1, 0, 1)  # fixes the world at 1
    c = flight.connect(srv.location)
    with pytest.raises(flight.FlightServerError, match=msg):
        c.do_get(flight.Ticket(ticket)).read_all()
    c.close()
    assert [s for s, _, _ in read_steps(srv.location, 0, 1, 1, 2)] == [1, 2]


def test_client_stream_eval_status_and_checkpoint(serve, run_dir):
    _, truth = run_dir
    srv = serve(MixerConfig(seq_len=32, global_batch=8, mixer="temperature", mixer_params={"temperature": 2.0}))
    s = MixtureStream(srv.location, rank=1, world_size=2, max_steps=3)
    batches = list(s)
    assert [b["step"] for b in batches] == [0, 1, 2]
    b = batches[0]
    assert b["input_ids"].dtype.is_floating_point is False and tuple(b["input_ids"].shape) == (4, 32)
    assert (b["labels"] == b["input_ids"]).all() and b["labels"].data_ptr() != b["input_ids"].data_ptr()
    assert b["domain"].tolist() == read_steps(srv.location, 1, 2, 0, 1)[0][2].tolist()
    assert s.report(0, [1.0, 2.0, 3.0, 4.0], b["domain"])["ok"]
    evals = list(s.eval_batches("c", batch_size=4, max_sequences=100))
    ids = np.concatenate([e["input_ids"].numpy().reshape(-1)[: int(e["n_valid"].sum())] for e in evals])
    want = np.concatenate([truth["holdout"]["c"][g] for g in sorted(truth["holdout"]["c"])])
    assert np.array_equal(ids, want)
    last = evals[-1]
    assert (last["labels"][-1, int(last["n_valid"][-1]) :] == -100).all()
    st = s.status()
    tok = {d: sum(len(t) for t in truth["train"][d].values()) for d in "abc"}
    z = sum(math.sqrt(n) for n in tok.values())
    assert st["weights"] == pytest.approx({d: math.sqrt(n) / z for d, n in tok.items()})
    state = s.state_dict()
    assert state["next_step"] == 3 and state["server"]["step"] == 3
    srv_state = state["server"]
    assert srv_state["schedule"][0]["reason"] == "init:temperature"
    assert srv_state["mixer"]["params"] == {"temperature": 2.0}
    assert set(srv_state["cursors"]) == {"a", "b", "c"} and srv_state["version"] == 1
    s.close()


def test_works_through_a_dataloader_without_workers(serve):
    from torch.utils.data import DataLoader

    srv = serve()
    s = MixtureStream(srv.location, max_steps=2)
    got = list(DataLoader(s, batch_size=None, num_workers=0))
    assert [b["step"] for b in got] == [0, 1] and tuple(got[0]["input_ids"].shape) == (8, 32)
    assert s.state_dict()["next_step"] == 2
    s.close()


def test_batches_the_trainer_keeps_are_never_overwritten_by_later_ones(serve):
    """The stream recycles the memory of batches the trainer has dropped, never of ones it keeps."""
    srv = serve(MixerConfig(seq_len=32, global_batch=8, prefetch=4))
    want = {t: toks for t, toks, _ in read_steps(srv.location, 0, 1, 0, 40)}
    s = MixtureStream(srv.location, prefetch=2, max_steps=40)
    kept, seen = [], set()
    for b in s:
        seen.add(b["input_ids"].data_ptr())
        assert np.array_equal(b["input_ids"].numpy(), want[b["step"]]) and (b["labels"] == b["input_ids"]).all()
        if b["step"] % 3 == 0:
            kept.append((b["step"], b["input_ids"], b["labels"][2:]))  # a whole tensor and a view
    for t, ids, tail in kept:
        assert np.array_equal(ids.numpy(), want[t]) and np.array_equal(tail.numpy(), want[t][2:])
    assert len(seen) < 40  # dropped batches' memory was reused
    s.close()


def test_narrow_streams_carry_the_same_ids_in_half_the_bytes(small_run_dir):
    """On a corpus whose ids fit uint16, a `narrow` ticket gets them as uint16; the default stays int32."""
    from mixers.server.flight import start_server

    srv = start_server(str(small_run_dir[0]), MixerConfig(seq_len=16, global_batch=8, prefetch=4), log_every=0)
    try:
        assert _action(srv.location, "info")["token_type"] == "uint16"
        wide = read_steps(srv.location, 1, 2, 0, 6)
        c = flight.connect(srv.location)
        ticket = {"kind": "train", "rank": 1, "world": 2, "step": 0, "steps": 6, "narrow": True}
        table = c.do_get(flight.Ticket(json.dumps(ticket).encode())).read_all()
        c.close()
        assert table.schema.field("input_ids").type.value_type == "uint16"
        assert all(t.dtype == np.int32 for _, t, _ in wide)
        narrow = table.column("input_ids").combine_chunks().flatten().to_numpy().reshape(-1, 16)
        assert np.array_equal(narrow, np.concatenate([t for _, t, _ in wide]))
        s = MixtureStream(srv.location, rank=1, world_size=2, max_steps=6)  # asks for narrow ids
        got = [b["input_ids"] for b in s]
        s.close()
        assert all(g.dtype == torch.int64 for g in got)
        assert np.array_equal(torch.cat(got).numpy(), np.concatenate([t for _, t, _ in wide]))
        c = flight.connect(srv.location)
        with pytest.raises(flight.FlightServerError, match="`narrow` must be true or false"):
            c.do_get(flight.Ticket(json.dumps({**ticket, "narrow": "yes"}).encode())).read_all()
        c.close()
    finally:
        srv.close()


def test_a_grouped_stream_carries_the_same_steps_in_fewer_messages(serve):
    srv = serve(MixerConfig(seq_len=16, global_batch=8, prefetch=4))
    one = read_steps(srv.location, 1, 2, 0, 10)  # the steps exist now: grouped reads get them at once
    c = flight.connect(srv.location)
    ticket = {"kind": "train", "rank": 1, "world": 2, "step": 0, "steps": 10, "group": 4}
    reader = c.do_get(flight.Ticket(json.dumps(ticket).encode()))
    sizes, rows = [], []
    for chunk in reader:
        meta = json.loads(chunk.app_metadata.to_pybytes())
        assert meta["step"] == sum(sizes)
        sizes.append(meta.get("steps", 1))
        rows.append(chunk.data.column("input_ids").flatten().to_numpy().reshape(-1, 16))
    assert sizes == [4, 4, 2]  # the last message stops at `steps`
    assert np.array_equal(np.concatenate(rows), np.concatenate([t for _, t, _ in one]))
    with pytest.raises(flight.FlightServerError, match="`group` must be at most 64"):
        c.do_get(flight.Ticket(json.dumps({**ticket, "group": 65}).encode())).read_all()
    c.close()
    s = MixtureStream(srv.location, rank=1, world_size=2, max_steps=10, group=3)
    got = list(s)
    s.close()
    assert [b["step"] for b in got] == list(range(10))
    assert np.array_equal(torch.cat([b["input_ids"] for b in got]).numpy(), np.concatenate([t for _, t, _ in one]))


def test_status_gives_the_weights_in_force_at_a_step(serve):
    """A trainer logs the weights of the step it trained, not of the batches prefetched after it."""
    phases = [[0, "a=1,b=1,c=1"], [5, "a=0.8,b=0.1,c=0.1"]]
    srv = serve(MixerConfig(seq_len=16, global_batch=4, mixer="schedule", mixer_params={"phases": phases}, prefetch=8))
    read_steps(srv.location, 0, 1, 0, 10)
    assert _action(srv.location, "status", {"step": 4})["weights"] == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    )
    assert _action(srv.location, "status", {"step": 5})["weights"] == pytest.approx({"a": 0.8, "b": 0.1, "c": 0.1})
    with pytest.raises(flight.FlightServerError, match="`step` must be a step number"):
        _action(srv.location, "status", {"step": -1})
