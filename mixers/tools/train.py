"""Reference trainer: a tiny GPT trained from a Sluice mixer server, reporting the feedback its mixer needs.

A tool, not part of the mixer library: a worked example and the demo (``make train-demo``).
One readable file in the spirit of nanoGPT. It shows the few lines a PyTorch trainer adds to
take part in online mixing — report per-sequence losses every step, run the held-out eval
or the gradient alignment when a batch says it is due — and checkpoints the model, the
optimiser and the mixer state together so a restart continues the same batches.

    python -m mixers.train --serve out/demo --mixer aioli --steps 300 --out out/train-demo
    python -m mixers.train --server grpc://127.0.0.1:8815 --steps 1000 --out out/run1

``--serve RUN`` starts a mixer server on a free loopback port for the run and stops it at
the end (``--server`` talks to one you started with ``sluice serve``). Outputs in ``--out``:
``metrics.jsonl`` (one line per eval: step, per-domain held-out loss, weights),
``result.json`` (final losses, the schedule, the settings), ``checkpoint.pt`` and, with
``--plot``, ``mixing.png`` (weights over steps and per-domain held-out loss).
On a GPU it trains in bf16 autocast; on CPU in float32.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixers.algorithms.base import REPORT_ALIGNMENT, REPORT_EVAL
from mixers.trainer.client import MixtureStream
from mixers.trainer.utils import alignment_scores, causal_lm_loss, held_out_losses
from storage.run import atomic_path

logger = logging.getLogger("sluice.train")

#: the packaged SmolLM2 tokenizer's vocabulary (the default `tokenize` stage)
DEFAULT_VOCAB = 49152


# ---------------------------------------------------------------------- model
@dataclass
class GPTConfig:
    vocab_size: int = DEFAULT_VOCAB
    seq_len: int = 128
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        hidden = 4 * cfg.n_embd
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, hidden), nn.GELU(), nn.Linear(hidden, cfg.n_embd), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + position embeddings, pre-norm transformer blocks, a head tied to the token embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if int(ids.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id {int(ids.max())} >= vocab_size {self.cfg.vocab_size}; pass --vocab-size")
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


# ---------------------------------------------------------------------- compact vocabulary
def token_frequencies(run: str) -> np.ndarray:
    """How often each token id occurs in the train split of a tokenized run."""
    from mixers.server.corpus import TRAIN, Corpus

    corpus = Corpus(run)
    counts = np.zeros(0, np.int64)
    for d in corpus.domains:
        idx = corpus.split(d, TRAIN)
        for u in range(idx.n_units):
            values, starts, lens = corpus.read_unit(idx, u)
            ids = np.concatenate([values[a : a + n] for a, n in zip(starts.tolist(), lens.tolist())])
            c = np.bincount(ids)
            if len(c) > len(counts):
                counts = np.pad(counts, (0, len(c) - len(counts)))
            counts[: len(c)] += c
    return counts


class VocabMap:
    """Maps token ids onto a compact vocabulary: the ``size`` most frequent train tokens get ids
    1..size, every other token id 0 (UNK). A tiny model's output layer then costs size + 1 logits
    instead of the tokenizer's ~50k; every mixer compared shares the same map, so losses compare."""

    def __init__(self, kept: list[int]) -> None:
        self.kept = [int(t) for t in kept]
        self.table = torch.zeros(max(self.kept, default=0) + 1, dtype=torch.long)
        self.table[torch.tensor(self.kept, dtype=torch.long)] = torch.arange(1, len(self.kept) + 1)

    @classmethod
    def from_run(cls, run: str, size: int) -> VocabMap:
        freq = token_frequencies(run)
        order = np.argsort(-freq, kind="stable")[:size]
        return cls(sorted(int(t) for t in order if freq[t] > 0))

    @property
    def size(self) -> int:
        return len(self.kept) + 1

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Remapped ids; -100 (ignored label positions) stays -100."""
        ignore = ids < 0
        clipped = ids.clamp(0, len(self.table) - 1)
        out = torch.where(ids < len(self.table), self.table[clipped], torch.zeros_like(ids))
        return torch.where(ignore, ids, out)

    def apply(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, "input_ids": self(batch["input_ids"]), "labels": self(batch["labels"])}


# ---------------------------------------------------------------------- eval sets
def run_tokenizer(run: str) -> str:
    """The tokenizer spec a curated run's ``tokenize`` stage used (its default if the stage left it)."""
    from storage.manifest import read_manifest

    stages = (read_manifest(run).get("recipe") or {}).get("stages") or []
    spec = next((s.get("tokenizer") for s in stages if s.get("op") == "tokenize"), None)
    return spec or "packaged:smollm2-135m"


def eval_set_batches(
    specs: list[str], tokenizer: str, seq_len: int, batch_size: int = 8
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Batches per domain of the eval sets ``specs`` (``PATH`` or ``PATH=DOMAIN``; the format of
    :mod:`storage.evalsets`), tokenized with ``tokenizer`` and packed into ``seq_len`` rows; labels
    are -100 on the padded tail, as the server's held-out batches."""
    from operators.models import load_tokenizer
    from storage.evalsets import load_eval_set, pack

    tok = load_tokenizer(tokenizer)
    by_domain: dict[str, list[np.ndarray]] = {}
    for spec in specs:
        path, _, domain = spec.partition("=")
        for ex in load_eval_set(path, domain or None):
            ids = tok(ex.text, add_special_tokens=False)["input_ids"]
            by_domain.setdefault(ex.domain, []).append(np.asarray(ids, np.int64))
    out: dict[str, list[dict[str, torch.Tensor]]] = {}
    for domain, lists in sorted(by_domain.items()):
        rows, valid = pack(lists, seq_len, tok.eos_token_id)
        ids = torch.from_numpy(rows)
        labels = ids.clone()
        labels[torch.arange(seq_len)[None, :] >= torch.from_numpy(valid)[:, None]] = -100
        out[domain] = [
            {"input_ids": ids[i : i + batch_size], "labels": labels[i : i + batch_size]}
            for i in range(0, len(ids), batch_size)
        ]
    return out


# ---------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    steps: int = 300
    total_steps: int | None = None  # the planned length (LR schedule) if the run stops early at `steps`
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_sequences: int = 16
    align_sequences: int = 8
    target: str | None = None
    checkpoint_every: int = 0
    seed: int = 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    total = cfg.total_steps or cfg.steps
    frac = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def pick_device() -> tuple[torch.device, Any]:
    """CUDA with bf16 autocast when available; else CPU in float32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.device("cpu"), nullcontext()


class Trainer:
    """Trains ``model`` on ``stream`` for ``cfg.steps`` global steps, answering the mixer's requests."""

    def __init__(
        self,
        stream: MixtureStream,
        model: GPT,
        cfg: TrainConfig,
        out: Path,
        vocab: VocabMap | None = None,
        eval_sets: dict[str, list[dict[str, torch.Tensor]]] | None = None,
    ) -> None:
        self.stream, self.model, self.cfg, self.out, self.vocab = stream, model, cfg, out, vocab
        self.eval_sets = eval_sets or {}
        self.device, self.autocast = pick_device()
        self.model.to(self.device)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        self.history: list[dict[str, Any]] = []
        self.ckpt = out / "checkpoint.pt"
        if cfg.target is not None and cfg.target not in stream.domains:
            raise ValueError(f"--target {cfg.target!r} is not a served domain: {stream.domains}")

    def _loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Mean loss per sequence [B] (after the compact-vocabulary map, if any)."""
        if self.vocab is not None:
            batch = self.vocab.apply(batch)
        with self.autocast:
            return causal_lm_loss(model, batch)

    def evaluate(self) -> dict[str, float]:
        """Per-domain held-out loss on the first ``eval_sequences`` held-out sequences of each domain
        (domains the run's split left without held-out documents are not scored; a warning says so once)."""
        have = self.stream.info.get("holdout_tokens") or {}
        domains = [d for d in self.stream.domains if have.get(d, 1) > 0]
        missing = sorted(set(self.stream.domains) - set(domains))
        if missing and not self.history:  # said once, at the first eval
            logger.warning("no held-out documents in %s: their held-out loss is not logged", ", ".join(missing))
        batches = {d: self.stream.held_out(d, 8, self.cfg.eval_sequences) for d in domains}
        return held_out_losses(self.model, batches, self._loss)

    def evaluate_sets(self) -> dict[str, float]:
        """Per-domain loss on the ``--eval`` sets (every token of every example; empty without sets)."""
        return held_out_losses(self.model, self.eval_sets, self._loss) if self.eval_sets else {}

    def alignments(self) -> dict[str, float]:
        """⟨g_domain, g_target⟩ on held-out sequences after the eval slice (so evals stay unbiased)."""
        n, a = self.cfg.eval_sequences, self.cfg.align_sequences
        target = self.cfg.target or self.stream.domains[0]

        def slice_of(d: str) -> dict[str, Any]:
            return self.stream.held_out(d, a, n + a)[-1]

        per_domain = {d: slice_of(d) for d in self.stream.domains}
        return alignment_scores(self.model, self._loss, per_domain, per_domain[target])

    def save(self, next_step: int) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "next_step": next_step}
        state["stream"] = self.stream.state_dict()  # the mixer state at next_step: resume both together
        state["history"] = self.history
        with atomic_path(self.ckpt) as tmp:
            torch.save(state, tmp)

    def load(self) -> int:
        state = torch.load(self.ckpt, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.stream.load_state_dict(state["stream"])
        self.history = state["history"]
        return int(state["next_step"])

    def _log_eval(self, step: int, losses: dict[str, float]) -> None:
        weights = self.stream.status(max(step - 1, 0))["weights"]  # the last trained step's, not the prefetched
        row = {
            "step": step,
            "eval_loss": losses,
            "mean_eval_loss": sum(losses.values()) / len(losses) if losses else None,
        }
        if self.eval_sets:
            sets = self.evaluate_sets()
            row.update(eval_set_loss=sets, mean_eval_set_loss=sum(sets.values()) / len(sets))
        row["weights"] = weights
        self.history.append(row)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        logger.info("step %d: held-out %s", step, " ".join(f"{d}={v:.3f}" for d, v in losses.items()))

    def train(self, start: int = 0) -> dict[str, Any]:
        torch.manual_seed(self.cfg.seed + start)
        self.model.train()
        t0, tokens = time.time(), 0
        by_domain = np.zeros(len(self.stream.domains), np.int64)
        self.stream.max_steps = self.cfg.steps - start  # consume exactly the budget: the state then sits at `steps`
        for batch in self.stream:
            step = batch["step"]
            for g in self.opt.param_groups:
                g["lr"] = lr_at(step, self.cfg)
            per_seq = self._loss(self.model, batch)
            per_seq.mean().backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            tokens += batch["input_ids"].numel()
            by_domain += np.bincount(batch["domain"].numpy(), minlength=len(by_domain)) * batch["input_ids"].shape[1]
            # the feedback: every step, and whatever the mixer says is due after this step
            self.stream.report(step, per_seq.detach().float(), batch["domain"])
            if REPORT_EVAL in batch["due"]:
                self.stream.run_eval(step, self.model, self._loss, max_sequences=self.cfg.eval_sequences)
            if REPORT_ALIGNMENT in batch["due"]:
                self.stream.report_alignment(step, self.alignments())
            if self.cfg.eval_every and (step + 1) % self.cfg.eval_every == 0:
                self._log_eval(step + 1, self.evaluate())
            if self.cfg.checkpoint_every and (step + 1) % self.cfg.checkpoint_every == 0:
                self.save(step + 1)
            if step % 25 == 0:
                rate = tokens / max(time.time() - t0, 1e-9)
                logger.info("step %d: train loss %.3f, %.0f tokens/s", step, float(per_seq.detach().mean()), rate)
        final = self.evaluate()
        if not self.history or self.history[-1]["step"] != self.cfg.steps:
            self._log_eval(self.cfg.steps, final)
        self.save(self.cfg.steps)
        server = self.stream.checkpoint(self.cfg.steps)
        sets = self.evaluate_sets()
        return {
            "final_eval_loss": final,
            "mean_eval_loss": sum(final.values()) / len(final) if final else None,
            "final_eval_set_loss": sets,
            "mean_eval_set_loss": sum(sets.values()) / len(sets) if sets else None,
            "schedule": server["schedule"],
            "mixer": server["mixer"],
            "seconds": round(time.time() - t0, 1),
            "tokens": tokens,
            "tokens_by_domain": dict(zip(self.stream.domains, by_domain.tolist())),  # this process's steps only
            "history": self.history,
        }


# ---------------------------------------------------------------------- plot
def plot(result: dict[str, Any], path: Path) -> Path:
    """Weights over steps (from the schedule) and per-domain held-out loss, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["settings"]["train"]["steps"]
    domains = sorted(result["final_eval_loss"])
    fig, (ax_w, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    sched = result["schedule"]
    for d in domains:
        xs, ys = [], []
        for i, e in enumerate(sched):
            end = sched[i + 1]["step"] if i + 1 < len(sched) else steps
            xs += [e["step"], end]
            ys += [e["weights"][d]] * 2
        ax_w.plot(xs, ys, label=d)
        hist = result["history"]
        ax_l.plot([h["step"] for h in hist], [h["eval_loss"][d] for h in hist], marker="o", label=d)
    ax_w.set(title=f"mixture weights ({result['mixer']['name']})", xlabel="step", ylabel="weight", ylim=(0, 1))
    ax_l.set(title="held-out loss per domain", xlabel="step", ylabel="loss (nats/token)")
    return save_figure(fig, (ax_w, ax_l), path)


def save_figure(fig: Any, axes: tuple[Any, ...], path: Path) -> Path:
    """Legends and light grids on ``axes``, then ``fig`` as a PNG at ``path`` (closed afterwards)."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mixers.train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", help="mixer server location, e.g. grpc://127.0.0.1:8815")
    src.add_argument("--serve", metavar="RUN", help="start a loopback server on this curated, tokenized run")
    p.add_argument("--mixer", default="aioli", help="with --serve: the mixing algorithm")
    p.add_argument("--param", action="append", default=[], help="with --serve: mixer parameter KEY=JSON; repeat")
    p.add_argument("--global-batch", type=int, default=16, help="with --serve: sequences per step")
    p.add_argument("--feedback-lag", type=int, default=2, help="with --serve: steps between feedback and its effect")
    p.add_argument("--mixer-seed", type=int, default=0, help="with --serve: the server's sampling seed")
    p.add_argument(
        "--epoch-cap",
        action="append",
        default=[],
        metavar="DOMAIN=E",
        help="with --serve: serve at most E epochs of DOMAIN (then its weight is 0); repeat",
    )
    p.add_argument("--token", default=None, help="bearer token for --server")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB, help="the tokenizer's vocabulary size")
    p.add_argument(
        "--compact-vocab", type=int, default=0, metavar="N", help="with --serve: model only the N most frequent tokens"
    )
    p.add_argument("--vocab-map", default=None, help="a vocab.json from an earlier --compact-vocab run")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--total-steps",
        type=int,
        default=None,
        help="the length the run is planned for (LR schedule; with --serve the mixer's total_steps), when this "
        "invocation stops earlier at --steps and a later --resume continues (default: --steps)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-sequences", type=int, default=16, help="held-out sequences per domain per eval")
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="FILE[=DOMAIN]",
        help="an eval set (JSONL/Parquet/text; `text` or question/answer fields; `domain` per record, else DOMAIN, "
        "else the file name); repeat. Scored at every eval on all its tokens",
    )
    p.add_argument("--eval-tokenizer", default=None, help="tokenizer for --eval (default with --serve: the run's)")
    p.add_argument("--target", default=None, help="DGA: the target domain whose held-out gradient guides the mix")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (model, optimiser, mixer)")
    p.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="out/train", help="directory for metrics, checkpoint, result and plot")
    p.add_argument("--plot", action="store_true", help="write OUT/mixing.png")
    return p.parse_args(argv)


def _mixer_params(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    eval_tokenizer = args.eval_tokenizer or (run_tokenizer(args.serve) if args.serve and args.eval else None)
    if args.eval and eval_tokenizer is None:
        raise SystemExit("--eval with --server needs --eval-tokenizer (the tokenizer the served run used)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    server = None
    state = None
    if args.resume and args.serve:
        state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["stream"]["server"]
    if args.serve:
        from mixers.server.caps import parse_caps
        from mixers.server.engine import MixerConfig
        from mixers.server.flight import start_server

        config = MixerConfig(
            seq_len=args.seq_len,
            global_batch=args.global_batch,
            seed=args.mixer_seed,
            mixer=args.mixer,
            mixer_params=_mixer_params(args.param),
            feedback_lag=args.feedback_lag,
            epoch_caps=parse_caps(args.epoch_cap),
            total_steps=args.total_steps or args.steps,  # the server plans by it (Aioli's probe budget)
        )
        server = start_server(args.serve, config, state=state, log_every=0)
        location = server.location
    else:
        location = args.server
    stream = MixtureStream(location, token=args.token, prefetch=4)
    try:
        if stream.seq_len != args.seq_len:
            raise SystemExit(f"the server serves seq_len {stream.seq_len}; pass --seq-len {stream.seq_len}")
        vocab = None
        if args.vocab_map:
            vocab = VocabMap(json.loads(Path(args.vocab_map).read_text()))
        elif args.compact_vocab:
            if not args.serve:
                raise SystemExit("--compact-vocab counts tokens in the run: use it with --serve, or pass --vocab-map")
            vocab = VocabMap.from_run(args.serve, args.compact_vocab)
        if vocab is not None:
            (out / "vocab.json").write_text(json.dumps(vocab.kept))
        torch.manual_seed(args.seed)
        n_vocab = vocab.size if vocab is not None else args.vocab_size
        model = GPT(GPTConfig(n_vocab, args.seq_len, args.n_layer, args.n_head, args.n_embd))
        cfg = TrainConfig(
            steps=args.steps,
            total_steps=args.total_steps,
            lr=args.lr,
            min_lr=args.lr / 10,
            eval_every=args.eval_every,
            eval_sequences=args.eval_sequences,
            target=args.target,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
        )
        sets = eval_set_batches(args.eval, eval_tokenizer, args.seq_len) if args.eval else None
        trainer = Trainer(stream, model, cfg, out, vocab, sets)
        start = trainer.load() if args.resume else 0
        result = trainer.train(start)
        result["settings"] = {"train": asdict(cfg), "model": asdict(model.cfg), "args": vars(args)}
        (out / "result.json").write_text(json.dumps(result, indent=1))
        logger.info("final held-out loss: mean %.4f %s", result["mean_eval_loss"], result["final_eval_loss"])
        if args.plot:
            logger.info("plot: %s", plot(result, out / "mixing.png"))
        print(f"wrote {out / 'result.json'}" + (f" and {out / 'mixing.png'}" if args.plot else ""))
        return result
    finally:
        stream.close()
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
