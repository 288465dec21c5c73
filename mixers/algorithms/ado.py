"""ADO — adaptive data optimization from per-domain scaling laws (Jiang et al. 2024; what Mixtera ships).

Each domain's training loss is modelled as a power law of the tokens trained on it,
L_i(n) = ε_i + β_i·n^(−α_i), fitted online from the ``report`` the trainer sends every step.
Its *learning speed* is the loss the next tokens are predicted to remove per log-token,
s_i = −dL_i/d(log n) = α_i·β_i·n_i^(−α_i): a domain still on the steep part of its curve is
worth more of the batch. Every ``update_every`` steps (after ``warmup``) the weights become

    π_new ∝ μ_i · s_i,   π ← γ·π + (1 − γ)·π_new,   then an ε/k floor for every live domain,

with μ the prior (the run's token distribution, ``prior: tokens``, or uniform). Here the fit is
deterministic and cheap: for ε_i on a small grid below the smallest smoothed loss seen, a least-
squares line of log(L − ε) on log n; the best residual wins. This follows the paper's idea
(scaling-law fits → preference for fast-learning domains, smoothed over time) without its
credit-assignment refinements; its comparison on simulated mixing laws is in BENCHMARKS.md (none on
real text yet).

Feedback: ``report`` every step. State: per-domain tokens and a bounded history of
(tokens, smoothed loss) points, the current policy and the step count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mixers.algorithms.base import EveryStepPolicy, Feedback, register
from mixers.checks import check_int, check_number

EPS_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 0.97)


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """(ε, β, α) of L = ε + β·n^(−α) fitted to points (n, loss) with n > 0; α >= 0."""
    logn = np.log(n)
    best = (float(loss.min()), 0.0, 0.0, math.inf)
    for f in EPS_GRID:
        eps = f * float(loss.min())
        y = np.log(np.maximum(loss - eps, 1e-9))
        slope, icept = np.polyfit(logn, y, 1)
        resid = float(((icept + slope * logn - y) ** 2).sum())
        if resid < best[3]:
            best = (eps, float(math.exp(icept)), float(max(0.0, -slope)), resid)
    return best[0], best[1], best[2]


@register("ado")
class ADO(EveryStepPolicy):
    """Adaptive data optimization: weights toward domains whose fitted loss curve still falls fast.

    Args:
        update_every: steps between re-fits.
        warmup: steps of the prior before the first fit.
        gamma: weight of the old policy when smoothing, in [0, 1).
        epsilon: share spread uniformly over live domains, in [0, 1).
        smoothing: EMA factor of each domain's reported loss before fitting, in [0, 1).
        window: fit points kept per domain (the most recent).
        prior: ``tokens`` (the run's token distribution) or ``uniform``.
    """

    def __init__(
        self,
        domains: list[str],
        *,
        token_counts: Mapping[str, int],
        update_every: int = 50,
        warmup: int = 100,
        gamma: float = 0.5,
        epsilon: float = 0.05,
        smoothing: float = 0.9,
        window: int = 200,
        prior: str = "tokens",
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        self.update_every = check_int(update_every, "ado: `update_every`", 1)
        self.warmup = check_int(warmup, "ado: `warmup`", 0)
        self.gamma = check_number(gamma, "ado: `gamma`", 0.0, 1.0)
        self.epsilon = check_number(epsilon, "ado: `epsilon`", 0.0, 1.0)
        self.smoothing = check_number(smoothing, "ado: `smoothing`", 0.0, 1.0)
        self.window = check_int(window, "ado: `window`", 5)
        if prior not in ("tokens", "uniform"):
            raise ValueError(f"ado: `prior` must be 'tokens' or 'uniform', got {prior!r}")
        self.prior_name = prior
        counts = np.array([float(self.token_counts[d]) for d in self.domains])
        self._live = counts > 0
        if not self._live.any():
            raise ValueError("ado: no domain has training tokens")
        self._mu = counts / counts.sum() if prior == "tokens" else self._live / self._live.sum()
        self._pi = self._mu.copy()
        self._n = np.zeros(len(self.domains))  # tokens trained per domain
        self._ema = np.full(len(self.domains), np.nan)  # smoothed training loss per domain
        self._hist: list[list[list[float]]] = [[] for _ in self.domains]  # [[tokens, smoothed loss], …]
        self.t = 0
        self.last_speed: list[float] | None = None

    def update(self, feedback: Feedback) -> dict[str, float] | None:
        losses = feedback.train_loss()
        tokens = feedback.tokens or {}
        if not losses:
            self.skip(feedback.step, "report has no domain with tokens")
            return None
        for i, d in enumerate(self.domains):
            if d in losses and tokens.get(d, 0) > 0:
                self._n[i] += tokens[d]
                prev = self._ema[i]
                self._ema[i] = losses[d] if np.isnan(prev) else self.smoothing * prev + (1 - self.smoothing) * losses[d]
                self._hist[i].append([float(self._n[i]), float(self._ema[i])])
                del self._hist[i][: -self.window]
        self.t += 1
        if self.t < self.warmup or (self.t - self.warmup) % self.update_every:
            return None
        speed = np.zeros(len(self.domains))
        for i in range(len(self.domains)):
            pts = np.asarray(self._hist[i])
            if self._live[i] and len(pts) >= 5 and pts[-1, 0] > pts[0, 0]:
                _, beta, alpha = fit_power_law(pts[:, 0], pts[:, 1])
                speed[i] = alpha * beta * pts[-1, 0] ** (-alpha)
        self.last_speed = speed.tolist()
        if not (speed > 0).any():
            return None
        k = int(self._live.sum())
        new = self._mu * speed
        new = new / new.sum()
        pi = self.gamma * self._pi + (1 - self.gamma) * new
        self._pi = np.where(self._live, (1 - self.epsilon) * pi / pi[self._live].sum() + self.epsilon / k, 0.0)
        return self.weights()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "pi": self._pi.tolist(),
            "tokens": self._n.tolist(),
            "ema": [None if np.isnan(x) else float(x) for x in self._ema],
            "history": self._hist,
            "t": self.t,
            "last_speed": self.last_speed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._pi = np.array(state["pi"], np.float64)
        self._n = np.array(state["tokens"], np.float64)
        self._ema = np.array([np.nan if x is None else x for x in state["ema"]], np.float64)
        self._hist = [[list(p) for p in h] for h in state["history"]]
        self.t = int(state["t"])
        self.last_speed = state.get("last_speed")
