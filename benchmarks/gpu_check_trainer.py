"""The ``trainer`` section of :mod:`benchmarks.gpu_check`: the reference trainer fed by a server, and in memory.

The reference trainer (``mixers.tools.train.Trainer``, bf16 autocast on a GPU) on a run tokenized here from
offline text (language reference, package READMEs, stdlib source), fed by ``sluice serve`` in its own process
(``server``) and by a server inside the trainer's process (``in_process``, what ``python -m mixers.train
--serve`` does), against the same model and optimiser step on one random batch of the same shape kept in memory
(``in_memory``: no mixer, no feedback; the ceiling the feeds are compared with).

Run:
    bash benchmarks/gpu_check.sh --only trainer          # on a GPU
    bash benchmarks/gpu_check.sh --cpu --only trainer    # on CPU, tiny sizes
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.gpu_check import Sizes
    from mixers.tools.train import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DOMAINS = ("pyref", "readme", "code")
HOLDOUT = 0.1


def _sync() -> None:
    """Wait for queued GPU work, so a timer stops when the work is done (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tokenized_run(root: Path, s: Sizes, tokenizer: str) -> dict[str, Any]:
    """Tokenize (``tokenize``, ``tokenizer``) and split (``split``) offline text into ``root/shards/domain=<d>/``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from benchmarks.bench_scoring import code_texts, pyref_texts, readme_texts
    from operators.split import Split
    from operators.tokenize import Tokenize
    from storage.fs import resolve
    from storage.run import shard_dir
    from storage.schema import READ_SCHEMA
    from storage.shards import write_table_atomic

    tokenize, split = Tokenize(stage="tokenize", tokenizer=tokenizer), Split(stage="split", holdout_fraction=HOLDOUT)
    fs, base = resolve(str(root))
    tokens = {}
    for domain, texts in zip(TRAIN_DOMAINS, (pyref_texts(), readme_texts(), code_texts())):
        texts = [t[: s.train_doc_chars] for t in texts[: s.train_docs]]
        n = len(texts)
        cols = {f.name: [None] * n for f in READ_SCHEMA}
        cols.update(id=[f"{domain}-{i:05d}" for i in range(n)], text=texts, domain=[domain] * n, source=["pydoc"] * n)
        table = split(tokenize(pa.table(cols, schema=READ_SCHEMA)))
        table = table.select(["id", "source", "tokens", "n_tokens", "split"])
        write_table_atomic(fs, f"{base}/{shard_dir(domain)}/part-00000.parquet", table)
        tokens[domain] = int(pc.sum(table.column("n_tokens")).as_py())
    return tokens


def _model_config(s: Sizes) -> GPTConfig:
    from mixers.tools.train import DEFAULT_VOCAB, GPTConfig

    return GPTConfig(DEFAULT_VOCAB, s.seq_len, s.n_layer, s.n_head, s.n_embd)


def in_memory_steps(s: Sizes) -> dict[str, Any]:
    """The trainer's step (forward in bf16 autocast on a GPU, backward, clipping, AdamW) repeated on one
    random batch kept in memory: what the model costs without a mixer, a transport or feedback."""
    import torch

    from mixers.tools.train import GPT, pick_device
    from mixers.trainer.utils import causal_lm_loss

    device, autocast = pick_device()
    torch.manual_seed(0)
    cfg = _model_config(s)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, cfg.vocab_size, (s.global_batch, s.seq_len))
    batch = {"input_ids": ids, "labels": ids.clone()}

    def step() -> None:
        with autocast:
            loss = causal_lm_loss(model, batch)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, allocator
    _sync()
    t0 = time.perf_counter()
    for _ in range(s.bare_steps):
        step()
    _sync()
    seconds = time.perf_counter() - t0
    tokens = s.bare_steps * ids.numel()
    return {"steps": s.bare_steps, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip


def trained_from(location: str, s: Sizes, out: Path) -> dict[str, Any]:
    """``Trainer.train`` for ``s.train_steps`` steps from the mixer server at ``location``, timed."""
    import torch

    from mixers.tools.train import GPT, TrainConfig, Trainer
    from mixers.trainer.client import MixtureStream

    out.mkdir(parents=True, exist_ok=True)
    stream = MixtureStream(location, prefetch=4, reconnect_timeout=60)
    try:
        torch.manual_seed(0)
        cfg = TrainConfig(steps=s.train_steps, warmup=min(20, s.train_steps), eval_every=0,
                          eval_sequences=s.eval_sequences)  # fmt: skip
        trainer = Trainer(stream, GPT(_model_config(s)), cfg, out)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    finally:
        stream.close()
    return {
        "steps": s.train_steps,
        "tokens": result["tokens"],
        "seconds": round(seconds, 3),
        "tokens_per_s": round(result["tokens"] / seconds, 1),
        "mean_eval_loss": result["mean_eval_loss"],
        "tokens_by_domain": result["tokens_by_domain"],
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, location: str, log: Path, timeout: float = 120.0) -> None:
    from mixers.trainer.client import RETRYABLE, MixtureStream

    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"`sluice serve` exited {proc.returncode}: {log.read_text()[-2000:]}")
        probe = MixtureStream(location, reconnect_timeout=0.5, call_timeout=5)
        try:
            probe.info  # noqa: B018 - answers once the server listens
            return
        except RETRYABLE:
            if time.monotonic() - t0 > timeout:
                raise
        finally:
            probe.close()


def trainer(s: Sizes, tokenizer: str) -> dict[str, Any]:
    """The section: the run tokenized with ``tokenizer``, then the three feeds timed."""
    from mixers.server.engine import MixerConfig
    from mixers.server.flight import start_server
    from mixers.tools.train import pick_device

    device = pick_device()[0]
    config = MixerConfig(seq_len=s.seq_len, global_batch=s.global_batch, mixer="stratified", total_steps=s.train_steps)
    out: dict[str, Any] = {
        "device": device.type,
        "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
        "model": asdict(_model_config(s)),
        "mixer": str(config),
        "method": "tokens/s over Trainer.train (includes its end-of-run held-out eval and checkpoint); "
        "in_memory: the same step on one random batch in memory, warm, no mixer or feedback",
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check-train-") as d:
        root = Path(d)
        t0 = time.perf_counter()
        out["run_tokens"] = tokenized_run(root / "run", s, tokenizer)
        out["run_seconds"] = round(time.perf_counter() - t0, 2)
        feeds = {"in_memory": in_memory_steps(s)}

        port, log = _free_port(), root / "serve.log"
        cmd = [sys.executable, "-m", "mixers.server.cli", str(root / "run"), "--port", str(port), "--mixer",
               config.mixer, "--seq-len", str(s.seq_len), "--global-batch", str(s.global_batch), "--total-steps",
               str(s.train_steps), "--prefetch", str(config.prefetch), "--log-every", "0"]  # fmt: skip
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        try:
            location = f"grpc://127.0.0.1:{port}"
            _wait_ready(proc, location, log)
            feeds["server"] = trained_from(location, s, root / "server")
        finally:
            from benchmarks.bench_mixer import stop_server

            stop_server(proc)

        server = start_server(str(root / "run"), config, log_every=0)
        try:
            feeds["in_process"] = trained_from(server.location, s, root / "in_process")
        finally:
            server.close()
    out["feeds"] = feeds
    ceiling = feeds["in_memory"]["tokens_per_s"]
    out["vs_in_memory"] = {k: round(feeds[k]["tokens_per_s"] / ceiling, 3) for k in ("server", "in_process")}
    return out
