"""`serve` as a command: typer registration, refusals, and a real process killed and resumed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import typer
from typer.testing import CliRunner

from mixers.server.cli import serve
from mixers.server.engine import MixerConfig
from mixers.server.flight import start_server
from mixers.trainer.client import MixtureStream

ROOT = Path(__file__).resolve().parents[3]
ARGS = ["--seq-len", "32", "--global-batch", "8", "--mixer", "static", "--weights", "a=1,b=1,c=2", "--log-every", "0"]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve)
    app.command("other")(lambda: None)  # with two commands typer dispatches by name, as `sluice serve`
    return app


def test_registers_as_a_typer_command_and_refuses_bad_starts(run_dir):
    r = CliRunner().invoke(_app(), ["serve", "--help"])
    assert r.exit_code == 0 and "--resume-from" in r.output and "--mixer" in r.output
    r = CliRunner().invoke(_app(), ["serve", str(run_dir[0]), "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 2 and "requires a token" in r.output
    r = CliRunner().invoke(_app(), ["serve", str(run_dir[0]), "--mixer", "static", "--port", "0"])
    assert r.exit_code == 2 and "`weights` is required" in r.output
    r = CliRunner().invoke(_app(), ["serve", "/nonexistent/run", "--port", "0"])
    assert r.exit_code == 2 and "error:" in r.output
    r = CliRunner().invoke(_app(), ["serve", str(run_dir[0]), "--port", "0", "--epoch-cap", "c"])
    assert r.exit_code == 2 and "--epoch-cap: expected DOMAIN=EPOCHS, got 'c'" in r.output
    caps = ["--epoch-cap", "a=0.1", "--epoch-cap", "b=0.1", "--epoch-cap", "c=0.1", "--total-steps", "10000"]
    r = CliRunner().invoke(_app(), ["serve", str(run_dir[0]), "--port", "0", "--seq-len", "32", *caps])
    assert r.exit_code == 2 and "epoch_caps: the caps allow at most" in r.output and "total_steps is 10,000" in r.output


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out, port, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mixers.server.cli", str(out), "--port", str(port), *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _take(stream, n):
    out = []
    for b in stream:
        out.append((b["step"], b["input_ids"].numpy().copy()))
        if len(out) == n:
            break
    return out


def test_a_killed_server_process_resumes_from_the_saved_state(run_dir, tmp_path):
    out = run_dir[0]
    ref_srv = start_server(str(out), MixerConfig(seq_len=32, global_batch=8, mixer="static",
                                                 mixer_params={"weights": "a=1,b=1,c=2"}), log_every=0)  # fmt: skip
    ref = _take(MixtureStream(ref_srv.location), 8)
    ref_srv.close()

    port = _port()
    proc = _spawn(out, port)
    try:
        s = MixtureStream(f"grpc://127.0.0.1:{port}", reconnect_timeout=60)
        head = _take(s, 4)
        (tmp_path / "mixer.json").write_text(json.dumps(s.state_dict()))
        s.close()
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(10)
    bad = _spawn(out, port, "--resume-from", str(tmp_path / "mixer.json"), "--seq-len", "64")
    assert bad.wait(60) == 2 and "conflicts with the resumed state's 32" in bad.stdout.read()
    proc = _spawn(out, port, "--resume-from", str(tmp_path / "mixer.json"))
    try:
        s = MixtureStream(f"grpc://127.0.0.1:{port}", reconnect_timeout=60)
        s.load_state_dict(json.loads((tmp_path / "mixer.json").read_text()))
        it = iter(s)
        tail = [(b["step"], b["input_ids"].numpy().copy()) for b in (next(it) for _ in range(4))]
        # SIGTERM with a stream open: the server ends the stream and exits promptly
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0 and time.monotonic() - t0 < 20
        s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert "from step 4" in log and "stopping the mixer server" in log
    assert [t for t, _ in head + tail] == list(range(8))
    for (_, a), (_, b) in zip(head + tail, ref):
        assert np.array_equal(a, b)
