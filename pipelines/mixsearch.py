"""``sluice mixsearch``: choose static mixture weights from many short proxy runs (RegMix, Data Mixing Laws).

1. Sample K mixtures around the run's token distribution (Dirichlet, RegMix-style), each capped so
   that no domain is trained on for more than ``epoch_cap`` epochs within the budget.
2. Train a short proxy per mixture (the reference GPT through ``--mixer static``) and measure its
   mean eval-set loss — or, for tests and quick checks, evaluate any ``f(weights) -> loss``.
3. Fit two regressions of loss on weights: the log-linear mixing law of Data Mixing Laws,
   L(w) = c + k·exp(t·w), and a gradient-boosted regression (RegMix); each is scored by
   held-out R² (K-fold), and the better one predicts.
4. Search the capped simplex for the predicted best mixture, validate it with one more proxy run,
   and print it as ``--weights d=w,…`` for ``sluice serve --mixer static``.

Run: ``sluice mixsearch out/run --eval evals/clean.jsonl --mixtures 16 --steps 200 -o out/mixsearch``
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.run import write_text_atomic

logger = logging.getLogger(__name__)


def sample_mixtures(
    prior: np.ndarray, n: int, caps: np.ndarray | None = None, concentration: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``n`` mixtures drawn from Dirichlet(concentration·k·prior) (the prior itself first), each within ``caps``."""
    rng = np.random.default_rng(seed)
    k = len(prior)
    alpha = np.maximum(concentration * k * np.asarray(prior, float), 1e-3)
    out = [np.asarray(prior, float)]
    while len(out) < n:
        out.append(rng.dirichlet(alpha))
    return np.stack([cap_weights(w, caps) for w in out])


def epoch_caps(tokens: np.ndarray, epochs: float, target_tokens: int) -> np.ndarray:
    """Per domain, the largest weight that serves at most ``epochs`` passes over its ``tokens`` in a run of
    ``target_tokens``."""
    return np.minimum(1.0, epochs * np.asarray(tokens, float) / target_tokens)


def cap_weights(w: np.ndarray, caps: np.ndarray | None) -> np.ndarray:
    """``w`` on the simplex with every weight at most its cap (excess moved to uncapped domains pro rata)."""
    w = np.asarray(w, float) / np.sum(w)
    if caps is None:
        return w
    caps = np.asarray(caps, float)
    if caps.sum() < 1 - 1e-9:
        raise ValueError(f"epoch caps allow at most {caps.sum():.3f} of the budget: raise the caps or lower the budget")
    for _ in range(len(w)):
        over = w > caps
        if not over.any():
            break
        excess = float((w[over] - caps[over]).sum())
        w[over] = caps[over]
        room = np.where(~over, caps - w, 0.0)
        w += excess * room / room.sum()
    return w


@dataclass
class LogLinear:
    """Data Mixing Laws' L(w) = c + k·exp(t·w), fitted by least squares."""

    c: float = 0.0
    k: float = 1.0
    t: np.ndarray | None = None

    def fit(self, w: np.ndarray, y: np.ndarray) -> LogLinear:
        from scipy.optimize import least_squares

        d = w.shape[1]

        def resid(theta: np.ndarray) -> np.ndarray:
            return theta[0] + np.exp(theta[1]) * np.exp(w @ theta[2:]) - y

        x0 = np.concatenate([[y.min() * 0.9, np.log(max(y.max() - y.min(), 1e-3))], np.zeros(d)])
        sol = least_squares(resid, x0)
        self.c, self.k, self.t = float(sol.x[0]), float(np.exp(sol.x[1])), sol.x[2:]
        return self

    def predict(self, w: np.ndarray) -> np.ndarray:
        return self.c + self.k * np.exp(np.asarray(w) @ self.t)


class Boosted:
    """RegMix's regression: gradient-boosted trees on the weights."""

    def fit(self, w: np.ndarray, y: np.ndarray) -> Boosted:
        from sklearn.ensemble import GradientBoostingRegressor

        self.model = GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, random_state=0)
        self.model.fit(w, y)
        return self

    def predict(self, w: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(w))


FITS: dict[str, Callable[[], Any]] = {"loglinear": LogLinear, "boosted": Boosted}


def held_out_r2(make: Callable[[], Any], w: np.ndarray, y: np.ndarray, folds: int = 4) -> float:
    """R² of predictions made by models fitted without the predicted mixtures (K-fold)."""
    n = len(y)
    pred = np.zeros(n)
    idx = np.arange(n)
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        pred[test] = make().fit(w[train], y[train]).predict(w[test])
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 0.0


def propose(model: Any, prior: np.ndarray, caps: np.ndarray | None, n: int = 20_000, seed: int = 1) -> np.ndarray:
    """The predicted-best mixture among ``n`` candidates on the (capped) simplex."""
    cands = sample_mixtures(prior, n, caps, concentration=0.5, seed=seed)
    return cands[int(np.argmin(model.predict(cands)))]


def mixsearch(
    domains: list[str],
    prior: np.ndarray,
    evaluate: Callable[[np.ndarray], float],
    mixtures: int = 16,
    caps: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample, evaluate, fit, propose and validate; return the record.

    ``weights`` is the fitted law's proposal when its validation run is at least as good as every sampled
    mixture, else the best sampled mixture (``chosen`` says which): a law that does not generalise — held-out
    R² ≤ 0 on noisy proxies — must not hand back a mixture worse than one already measured."""
    if mixtures < 6:
        raise ValueError(f"mixsearch needs at least 6 mixtures to fit and hold out, got {mixtures}")
    w = sample_mixtures(prior, mixtures, caps, seed=seed)
    y = np.array([evaluate(x) for x in w])
    fits = {name: held_out_r2(make, w, y) for name, make in FITS.items()}
    best_fit = max(fits, key=fits.get)
    model = FITS[best_fit]().fit(w, y)
    proposal = propose(model, prior, caps, seed=seed + 1)
    validated = evaluate(proposal)
    uniform = cap_weights(np.full(len(domains), 1.0 / len(domains)), caps)
    return choose(
        {
            "domains": domains,
            "prior": dict(zip(domains, np.round(prior, 6).tolist())),
            "mixtures": [dict(zip(domains, np.round(x, 6).tolist())) for x in w],
            "losses": np.round(y, 6).tolist(),
            "held_out_r2": {k: round(v, 4) for k, v in fits.items()},
            "fit": best_fit,
            "proposal": dict(zip(domains, np.round(proposal, 6).tolist())),
            "predicted_loss": round(float(model.predict(proposal[None])[0]), 6),
            "validated_loss": round(float(validated), 6),
            "best_sampled_loss": round(float(y.min()), 6),
            "stratified": dict(zip(domains, np.round(uniform, 6).tolist())),
        }
    )


def choose(record: dict[str, Any]) -> dict[str, Any]:
    """Set ``weights`` and ``chosen`` of a mixsearch record: the proposal if it validated at least as well as
    every sampled mixture, else the best sampled one."""
    losses = record["losses"]
    best = int(np.argmin(losses))
    chosen = "proposal" if record["validated_loss"] <= losses[best] else "best_sampled"
    if chosen == "best_sampled":
        logger.warning(
            "the proposal validated at %.4f, worse than the best sampled mixture (%.4f; held-out R² %s): "
            "returning that mixture",
            record["validated_loss"],
            losses[best],
            record["held_out_r2"],
        )
    weights = record["proposal"] if chosen == "proposal" else record["mixtures"][best]
    return {**record, "weights": weights, "chosen": chosen}


def weights_flag(weights: dict[str, float]) -> str:
    """``--weights a=0.5,b=0.5`` for ``sluice serve --mixer static``."""
    return "--weights " + ",".join(f"{d}={w:.4f}" for d, w in weights.items())


def proxy_evaluator(
    run: str, evals: list[str], out: Path, steps: int, global_batch: int, seq_len: int, seed: int = 0, **model: Any
) -> Callable[[np.ndarray], float]:
    """``f(weights) -> mean eval-set loss`` of a short proxy run with ``--mixer static`` on ``run``."""
    from mixers.server.corpus import Corpus
    from mixers.tools.train import main

    domains = Corpus(run).domains
    counter = iter(range(10**9))

    def evaluate(w: np.ndarray) -> float:
        i = next(counter)
        weights = ",".join(f"{d}={x:.6f}" for d, x in zip(domains, w))
        argv = [
            "--serve", run, "--mixer", "static", "--param", f"weights={json.dumps(weights)}",
            "--steps", str(steps), "--global-batch", str(global_batch), "--seq-len", str(seq_len),
            "--seed", str(seed), "--eval-every", str(steps), "--out", str(out / f"proxy-{i:03d}"),
        ]  # fmt: skip
        for k, v in model.items():
            if v is not None:
                argv += [f"--{k.replace('_', '-')}", str(v)]
        for e in evals:
            argv += ["--eval", e]
        return float(main(argv)["mean_eval_set_loss"])

    return evaluate


def mixsearch_run(
    run: str,
    evals: list[str],
    out: str | Path,
    *,
    mixtures: int = 16,
    steps: int = 200,
    global_batch: int = 16,
    seq_len: int = 128,
    epoch_cap: float | None = None,
    target_steps: int | None = None,
    seed: int = 0,
    **model: Any,
) -> dict[str, Any]:
    """:func:`mixsearch` with short proxy runs on ``run`` (prior: its train tokens per domain); writes
    ``OUT/mixsearch.json``. ``epoch_cap`` bounds each domain to that many epochs of its train tokens in the run
    the mixture is for, ``target_steps`` long (default: as long as a proxy). A short proxy never repeats a small
    domain, so a mixture it favours can mean many epochs of that domain at the target's length: the caps keep
    the search to mixtures the target run can serve."""
    from mixers.server.corpus import Corpus

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(run)
    if not corpus.has_split:
        raise ValueError(f"{run}: the proxies need held-out data; end the run's recipe with {{op: split}}")
    tokens = corpus.tokens("train")
    domains = sorted(tokens)
    have = np.array([tokens[d] for d in domains], float)
    if not have.sum():
        raise ValueError(f"{run}: no train tokens")
    budget = steps * global_batch * seq_len
    target = (target_steps or steps) * global_batch * seq_len
    caps = None if epoch_cap is None else epoch_caps(have, epoch_cap, target)
    if model.get("compact_vocab"):  # one map for every proxy (built once: it reads the whole train split)
        from mixers.tools.train import VocabMap

        vocab = out / "vocab.json"
        write_text_atomic(vocab, json.dumps(VocabMap.from_run(run, model.pop("compact_vocab")).kept))
        model["vocab_map"] = str(vocab)
    evaluate = proxy_evaluator(run, evals, out, steps, global_batch, seq_len, seed, **model)
    record = mixsearch(domains, have / have.sum(), evaluate, mixtures, caps, seed)
    record.update(run=run, eval=evals, tokens_per_proxy=budget, target_tokens=target, epoch_cap=epoch_cap)
    record["weights_flag"] = weights_flag(record["weights"])
    write_text_atomic(out / "mixsearch.json", json.dumps(record, indent=1))
    return record
