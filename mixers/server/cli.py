"""`sluice serve`: serve a run's tokenized shards to trainers over Arrow Flight.

Run standalone (``python -m mixers.cli`` is the same command)::

    python -m mixers.server.cli out/run --mixer temperature --temperature 3 --seq-len 2048 --global-batch 64
    python -m mixers.server.cli out/run --mixer static --weights web=0.7,code=0.3 --port 8815
    python -m mixers.server.cli out/run --resume-from ckpt/mixer_state.json
    python -m mixers.server.cli out/run --mixer aioli --total-steps 2000 --epoch-cap code=2 --epoch-cap docs=4
    SLUICE_MIXER_TOKEN=… python -m mixers.server.cli out/run --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import typer

DEFAULTS = {
    "mixer": "stratified",
    "seq_len": 2048,
    "global_batch": 64,
    "seed": 0,
    "shuffle_window": 1,
    "feedback_lag": 4,
}


def _params(param: list[str] | None, weights: str | None, temperature: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in param or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--param")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    if weights is not None:
        out["weights"] = weights
    if temperature is not None:
        out["temperature"] = temperature
    return out


def _one_line(e: BaseException) -> str:
    """``e``'s message as one line, after its type unless it is a ValueError or OSError (messages of ours)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(e, (ValueError, OSError)) and text else f"{type(e).__name__}: {text}".rstrip(": ")


def serve(
    out: str = typer.Argument(..., help="Run directory whose shards were tokenized (and split) by `sluice curate`."),
    mixer: str = typer.Option(
        DEFAULTS["mixer"], "--mixer", "-m", help="static, stratified, temperature, aioli, dga, odm, doremi."
    ),
    seq_len: int = typer.Option(DEFAULTS["seq_len"], "--seq-len", help="Tokens per packed sequence."),
    global_batch: int = typer.Option(DEFAULTS["global_batch"], "--global-batch", help="Sequences per global step."),
    seed: int = typer.Option(DEFAULTS["seed"], "--seed", help="Seed of every draw and shuffle."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; non-loopback needs --token."),
    port: int = typer.Option(8815, "--port", help="TCP port."),
    token: str | None = typer.Option(
        None, "--token", envvar="SLUICE_MIXER_TOKEN", help="Bearer token clients must send (env SLUICE_MIXER_TOKEN)."
    ),
    tls_cert: str | None = typer.Option(None, "--tls-cert", help="PEM certificate: serve over TLS."),
    tls_key: str | None = typer.Option(None, "--tls-key", help="PEM private key for --tls-cert."),
    resume_from: str | None = typer.Option(
        None, "--resume-from", help="State JSON (MixtureStream.state_dict() or a `checkpoint` result) to continue."
    ),
    weights: str | None = typer.Option(None, "--weights", help="static: DOMAIN=W,… or a JSON object."),
    temperature: float | None = typer.Option(None, "--temperature", help="temperature: T in size^(1/T)."),
    param: list[str] | None = typer.Option(None, "--param", help="Mixer parameter KEY=VALUE (JSON value); repeat."),
    shuffle_window: int = typer.Option(
        DEFAULTS["shuffle_window"],
        "--shuffle-window",
        help="Row groups shuffled together; memory/domain ≈ 2–3 × this × row-group tokens × 4 B.",
    ),
    feedback_lag: int = typer.Option(
        DEFAULTS["feedback_lag"], "--feedback-lag", help="Steps between feedback and the weights it moves."
    ),
    prefetch: int = typer.Option(8, "--prefetch", help="Global steps produced ahead of the trainer."),
    epoch_cap: list[str] | None = typer.Option(
        None,
        "--epoch-cap",
        help="DOMAIN=E: serve at most E epochs of DOMAIN's train tokens (then its weight is 0); repeat.",
    ),
    total_steps: int | None = typer.Option(
        None, "--total-steps", help="The run's length in steps: Aioli's probe budget, checked against --epoch-cap."
    ),
    log_every: float = typer.Option(30.0, "--log-every", help="Seconds between status log lines (0: off)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log more."),
) -> None:
    """Serve OUT's train split as mixture-weighted packed batches over Arrow Flight (Ctrl-C stops)."""
    from mixers.server.engine import MixerConfig
    from mixers.server.flight import start_server
    from mixers.server.state import load_state

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("ray", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from mixers.server.caps import parse_caps

        params = _params(param, weights, temperature)
        caps = parse_caps(epoch_cap or [])
        state = load_state(resume_from) if resume_from else None
        if state is not None:
            given = {"mixer": mixer, "seq_len": seq_len, "global_batch": global_batch, "seed": seed}
            given |= {"shuffle_window": shuffle_window, "feedback_lag": feedback_lag}
            recorded = {**state["config"], "seed": state["seed"], "mixer": state["mixer"]["name"]}
            for k, v in given.items():
                if v != DEFAULTS[k] and k in recorded and recorded[k] != v:
                    raise ValueError(f"--{k.replace('_', '-')} {v} conflicts with the resumed state's {recorded[k]}")
            if params and params != state["mixer"].get("params"):
                raise ValueError("mixer parameters cannot change on resume (the state records them)")
            if caps and caps != state["config"].get("epoch_caps", {}):
                raise ValueError("--epoch-cap cannot change on resume (the state records the caps)")
            if total_steps is not None and total_steps != state["config"].get("total_steps"):
                raise ValueError("--total-steps cannot change on resume (the state records it)")
        config = MixerConfig(
            seq_len=seq_len,
            global_batch=global_batch,
            seed=seed,
            mixer=mixer,
            mixer_params=params,
            shuffle_window=shuffle_window,
            feedback_lag=feedback_lag,
            prefetch=prefetch,
            epoch_caps=caps,
            total_steps=total_steps,
        )
        server = start_server(
            out,
            config,
            state=state,
            host=host,
            port=port,
            token=token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            log_every=log_every,
        )
    except typer.BadParameter:
        raise  # typer prints it with the usage
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as e:  # one line, not a traceback (with -v the traceback is logged)
        logging.getLogger(__name__).debug("start-up failed", exc_info=e)
        typer.echo(f"error: {_one_line(e)}", err=True)
        raise typer.Exit(2) from None
    eng = server.engine
    tok = ", ".join(f"{d} {n:,}" for d, n in eng.train_tokens.items())
    typer.echo(
        f"serving {out} on {server.location} | {eng.config} | from step {eng.base} | train tokens: {tok}",
        err=True,
    )
    sys.stderr.flush()
    # the server listens from construction; wait for SIGINT/SIGTERM here, then end open streams first
    # (gRPC's own signal handling would wait for streams that never end)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        typer.echo("stopping the mixer server", err=True)
        server.close()


def main() -> None:  # pragma: no cover - standalone entry
    typer.run(serve)


if __name__ == "__main__":  # pragma: no cover
    main()
