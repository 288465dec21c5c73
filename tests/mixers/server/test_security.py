"""Binding, bearer tokens and TLS; hostile clients: oversized or deep requests, false token counts, a
refused ticket fixing the world, two clients on a rank, malformed resume states, start-up errors."""

import copy
import json
import logging
import re
import shutil
import subprocess
import time

import pyarrow.flight as flight
import pytest
from typer.testing import CliRunner

from mixers.server.engine import CLAIM_WAIT, MixerConfig
from mixers.server.flight import MAX_ACTION_BYTES, MAX_JSON_DEPTH, MAX_TICKET_BYTES, is_loopback, start_server
from mixers.server.state import check_state
from mixers.trainer.client import MixtureStream
from tests.mixers.conftest import read_steps
from tests.mixers.server.test_cli import _app


def test_non_loopback_bind_without_token_is_refused_at_start(run_dir):
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ValueError, match=r"not loopback.*requires a token"):
            start_server(str(run_dir[0]), MixerConfig(seq_len=32, global_batch=8), host=host, port=0)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def _refused(location, headers):
    c = flight.connect(location)
    opts = flight.FlightCallOptions(headers=headers)
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(c.do_action(flight.Action("status", b"{}"), opts))
    with pytest.raises(flight.FlightUnauthenticatedError):
        c.do_get(flight.Ticket(json.dumps({"kind": "train"}).encode()), opts).read_all()
    c.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_token_is_required_when_set_and_wrong_tokens_are_refused(serve, host):
    srv = serve(host=host, token="s3cret")
    assert srv.location.startswith("grpc+tcp://127.0.0.1:")
    _refused(srv.location, [])
    _refused(srv.location, [(b"authorization", b"Bearer wrong")])
    _refused(srv.location, [(b"authorization", b"s3cret")])
    steps = read_steps(srv.location, 0, 1, 0, 2, headers=[(b"authorization", b"Bearer s3cret")])
    assert [s for s, _, _ in steps] == [0, 1]
    s = MixtureStream(srv.location, token="s3cret", max_steps=1)
    assert [b["step"] for b in s] == [0]
    assert s.status()["failed"] is None
    s.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(serve, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = serve(tls_cert=str(cert), tls_key=str(key), token="t")
    assert srv.location.startswith("grpc+tls://")
    s = MixtureStream(srv.location, token="t", tls_root_certs=str(cert), max_steps=2)
    assert [b["step"] for b in s] == [0, 1]
    s.close()
    plain = srv.location.replace("grpc+tls", "grpc+tcp")
    c = flight.connect(plain)
    with pytest.raises(flight.FlightError):
        list(c.do_action(flight.Action("status", b"{}"), flight.FlightCallOptions(timeout=2)))
    c.close()
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        serve(tls_cert=str(cert))


# ---------------------------------------------------------------- hostile clients (issue "Data safety", item 10)


def _clean(err: BaseException) -> None:
    """A client-facing error: one short line, no traceback, no file path."""
    msg = str(err)
    assert "Traceback" not in msg and 'File "' not in msg and ".py" not in msg, msg
    assert not re.search(r"(/[\w.=-]+){2,}", msg), msg
    assert len(msg) < 600, msg


def _ticket(**kw) -> flight.Ticket:
    return flight.Ticket(json.dumps({"kind": "train", **kw}).encode())


def _call(location: str, kind: str, body: dict | None = None):
    c = flight.connect(location)
    try:
        results = list(c.do_action(flight.Action(kind, json.dumps(body or {}).encode())))
        return json.loads(results[0].body.to_pybytes())
    finally:
        c.close()


def test_hostile_bodies_and_tickets_get_a_short_error_and_the_server_keeps_serving(serve, caplog):
    """Finding a: deep nesting, huge numbers and oversized bodies are refused before or while parsing, with a
    short message; an unexpected error (in an action or inside a stream) is logged, not sent."""
    srv = serve()
    c = flight.connect(srv.location)
    deep = {"step": 0}
    for _ in range(MAX_JSON_DEPTH + 2):
        deep = {"x": [deep]}
    bodies = [
        (b"[" * 100_000, f"nested more than {MAX_JSON_DEPTH} deep"),
        (json.dumps(deep).encode(), f"nested more than {MAX_JSON_DEPTH} deep"),
        (b'{"step": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (json.dumps({"step": 0, "pad": "x" * MAX_ACTION_BYTES}).encode(), "more than the 1,048,576 allowed"),
    ]
    for raw, msg in bodies:
        with pytest.raises(flight.FlightServerError, match=msg) as e:
            list(c.do_action(flight.Action("report", raw)))
        _clean(e.value)
    tickets = [
        (b"{" * 60_000, "not valid JSON|nested more than"),
        (b"[" * 60_000, f"nested more than {MAX_JSON_DEPTH} deep"),
        (json.dumps({"kind": "train", "pad": "x" * MAX_TICKET_BYTES}).encode(), "more than the 65,536 allowed"),
    ]
    for raw, msg in tickets:
        with pytest.raises(flight.FlightServerError, match=msg) as e:
            c.do_get(flight.Ticket(raw)).read_all()
        _clean(e.value)

    def broken(*_, **__):
        raise OSError("[Errno 5] /secret/run/shards/domain=a/part-00000.parquet: input/output error")

    caplog.set_level(logging.WARNING, logger="mixers.server.flight")
    srv.engine.status = broken
    with pytest.raises(flight.FlightServerError, match=r"^status: internal server error \(OSError\)") as e:
        list(c.do_action(flight.Action("status", b"{}")))
    _clean(e.value)
    srv.engine.batch = broken  # inside a train stream
    with pytest.raises(flight.FlightServerError, match=r"^train stream: internal server error \(OSError\)") as e:
        c.do_get(_ticket(rank=0, world=1, step=0, steps=1)).read_all()
    _clean(e.value)
    del srv.engine.status, srv.engine.batch
    assert sum("unexpected error" in r.getMessage() and r.exc_info is not None for r in caplog.records) == 2
    c.close()
    assert [s for s, _, _ in read_steps(srv.location, 0, 1, 0, 2)] == [0, 1]
    assert _call(srv.location, "status")["failed"] is None


def test_reports_may_not_claim_more_tokens_than_the_rank_was_served(serve):
    """Finding b: a `report` may count at most the tokens of each domain in its rank's slice of the step."""
    srv = serve(MixerConfig(seq_len=32, global_batch=8, mixer="odm", prefetch=1))
    domains = srv.engine.domains
    slices = {r: read_steps(srv.location, r, 4, 0, 1)[0][2] for r in range(4)}  # two sequences a rank
    served = {r: {domains[k]: 32 * int((ids == k).sum()) for k in set(ids.tolist())} for r, ids in slices.items()}

    def report(rank: int, tokens: dict, step: int = 0) -> dict:
        loss = {d: 2.0 * n for d, n in tokens.items()}
        return _call(
            srv.location, "report", {"step": step, "rank": rank, "world": 4, "loss_sum": loss, "tokens": tokens}
        )

    d0 = next(iter(served[0]))
    absent = next(d for d in domains if d not in served[0])
    for tokens in ({d0: 10**30}, {d0: served[0][d0] + 1}, {absent: 1}):
        with pytest.raises(
            flight.FlightServerError, match=r"`tokens` exceed what rank 0 of 4 was served of step 0"
        ) as e:
            report(0, tokens)
        _clean(e.value)
    assert report(0, served[0])["ok"]  # exactly what was served
    assert report(1, {d: n - 5 for d, n in served[1].items()})["ok"]  # fewer: masked positions
    assert all(v == pytest.approx(2.0) for v in _call(srv.location, "status")["train_loss"].values())
    # a step this server has not produced yet (a trainer re-sending reports to a restarted server) is
    # produced on demand and checked the same way
    assert _call(srv.location, "status")["produced_through"] < 3
    assert report(2, {d0: 0}, step=3)["ok"]
    with pytest.raises(flight.FlightServerError, match="exceed what rank 3 of 4 was served of step 3"):
        report(3, {d0: 10**30}, step=3)


def test_only_an_accepted_request_fixes_the_world(serve):
    """Finding c: a refused train ticket (or report) leaves the server's world size unset."""
    srv = serve()
    c = flight.connect(srv.location)
    with pytest.raises(flight.FlightServerError, match="too far ahead"):
        c.do_get(_ticket(rank=0, world=2, step=10**9)).read_all()
    assert _call(srv.location, "status")["world"] is None
    with pytest.raises(flight.FlightServerError, match=r"`step` must be an integer >= 0"):
        c.do_get(_ticket(rank=1, world=4, step=-1)).read_all()
    c.close()
    bad = {"step": 0, "rank": 0, "world": 8, "loss_sum": {"a": 1.0}, "tokens": {"a": 10**30}}
    with pytest.raises(flight.FlightServerError, match="exceed"):
        _call(srv.location, "report", bad)
    assert _call(srv.location, "status")["world"] is None
    assert [s for s, _, _ in read_steps(srv.location, 0, 1, 0, 2)] == [0, 1]
    assert _call(srv.location, "status")["world"] == 1


def test_a_rank_has_one_stream_at_a_time(serve):
    """Finding d: a second client asking for a rank that is being streamed is refused; the rank is free again
    once that stream ends (a finite stream: with its last step), so a client's reconnect is served."""
    srv = serve(MixerConfig(seq_len=32, global_batch=8, mixer="odm"))  # no reports: steps 0-3 only, as in lockstep
    first = flight.connect(srv.location)
    reader = first.do_get(_ticket(rank=0, world=2, step=0))  # unbounded
    assert json.loads(reader.read_chunk().app_metadata.to_pybytes())["step"] == 0
    other = flight.connect(srv.location)
    t0 = time.monotonic()
    with pytest.raises(flight.FlightServerError, match="rank 0 already has an open train stream") as e:
        other.do_get(_ticket(rank=0, world=2, step=0)).read_chunk()
    _clean(e.value)
    assert time.monotonic() - t0 >= CLAIM_WAIT - 0.2  # it waited for the open stream to end first
    for _ in range(3):  # rank 1 is free; back-to-back finite reads of it are fine
        assert [s for s, _, _ in read_steps(srv.location, 1, 2, 0, 2)] == [0, 1]
    assert _call(srv.location, "status")["connected_ranks"] == [0]
    reader.cancel()  # the first client goes away: its rank is free for the next request
    first.close()
    assert [s for s, _, _ in read_steps(srv.location, 0, 2, 1, 2)] == [1, 2]
    other.close()
    # a MixtureStream that restarts its own stream (here: load_state_dict while iterating) is served
    s = MixtureStream(srv.location, rank=0, world_size=2, prefetch=1, group=1)
    it = iter(s)
    assert [next(it)["step"] for _ in range(3)] == [0, 1, 2]
    s.load_state_dict({"next_step": 1})
    assert [next(it)["step"] for _ in range(2)] == [1, 2]
    s.close()


def test_resume_refuses_malformed_state_fields(serve, run_dir, tmp_path):
    """Finding e: a state with out-of-range cursors or malformed fields is refused with a one-line error
    naming the field, by start_server and by `serve --resume-from`."""
    srv = serve()
    s = MixtureStream(srv.location, max_steps=3)
    assert len(list(s)) == 3
    good = s.state_dict()["server"]
    s.close()
    assert check_state(good)["step"] == 3
    cases = [
        (["cursors", "a"], -1, r"`cursors\['a'\]` must be an integer >= 0, got -1$"),
        (["cursors", "a"], 10**6, r"`cursors` add up to \d+ sequences, more than the 24 of 3 steps of 8"),
        (["cursors", "b"], 2**70, r"`cursors\['b'\]` must be an integer"),
        (["step"], -1, r"`step` must be an integer >= 0, got -1"),
        (["step"], "3", r"`step` must be an integer"),
        (["schedule"], [], r"`schedule` must be a non-empty list"),
        (["schedule", 0, "step"], 7, r"`schedule\[0\].step` must be an integer in \[0, 3\]"),
        (["schedule", 0, "weights"], {"a": -1}, r"`schedule\[0\].weights`: weight for 'a' must be"),
        (["schedule", 0, "weights"], None, r"`schedule\[0\].weights` must be an object"),
        (["config", "seq_len"], 0, r"`config.seq_len` must be an integer >= 1"),
        (["world"], 3, r"`world` must be a divisor of config.global_batch 8"),
        (["closed_through"], 99, r"`closed_through` must be an integer in \[-1, 2\]"),
        (["mixer"], "stratified", r"`mixer` must be an object"),
        (["feedback"], [{"step": 1, "reports": {"0": {"loss_sum": {"a": 1.0}, "tokens": {"a": -4}}}}],
         r"`feedback\[0\]`: `tokens`\['a'\] must be an integer >= 0"),
    ]  # fmt: skip
    for path, value, msg in cases:
        bad = copy.deepcopy(good)
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ValueError, match=msg) as e:
            start_server(str(run_dir[0]), state=bad, log_every=0)
        assert "\n" not in str(e.value)
    bad = copy.deepcopy(good)
    bad["cursors"]["a"] = -1
    (tmp_path / "bad.json").write_text(json.dumps({"next_step": 3, "server": bad}))
    r = CliRunner().invoke(
        _app(), ["serve", str(run_dir[0]), "--port", "0", "--resume-from", str(tmp_path / "bad.json")]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: mixer state: `cursors['a']` must be an integer >= 0, got -1\n" in r.output


def test_serve_start_up_errors_are_one_line(serve, run_dir, tmp_path, monkeypatch):
    """Finding f: a port in use, a bad TLS certificate and unexpected errors end `serve` with one line, exit 2."""
    busy = serve()
    args = ["serve", str(run_dir[0]), "--log-every", "0"]
    r = CliRunner().invoke(_app(), [*args, "--port", str(busy.port)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"error: cannot listen on 127.0.0.1:{busy.port}: address already in use" in r.output
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    r = CliRunner().invoke(_app(), [*args, "--port", "0", "--tls-cert", str(junk), "--tls-key", str(junk)])
    assert r.exit_code == 2 and "error: cannot listen on 127.0.0.1:0: gRPC did not start (are the TLS" in r.output

    def broken(*_, **__):
        raise RuntimeError("something odd\n  File '/work/x.py', line 1")

    monkeypatch.setattr("mixers.server.flight.start_server", broken)
    r = CliRunner().invoke(_app(), [*args, "--port", "0"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == "error: RuntimeError: something odd"
    assert "Traceback" not in r.output and "/work/x.py" not in r.output
