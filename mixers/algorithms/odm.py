"""ODM — online data mixing as a multi-armed bandit (Albalak et al. 2023).

Each domain is an arm; its reward is the training loss the trainer reports for it (a
domain the model still finds hard is worth sampling). Every step, for each domain in
the batch with mean loss r_i under weight π_i:

- ``exp3`` (the paper's EXP3 with smoothed importance-weighted rewards):
  R̂_i ← γ·R̂_i + (1 − γ)·r_i / π_i;
  π(i) = (1 − K·ε_t)·softmax(ε_{t−1}·R̂)_i + ε_t,  ε_t = min(1/K, √(ln K / (K·t))).
- ``smoothed_mean``: R_i ← γ·R_i + (1 − γ)·e^{r_i}; π ∝ R with the same ε_t floor.

Feedback: ``report`` every step (the client sends it every step anyway).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mixers.algorithms.base import EveryStepPolicy, Feedback, register
from mixers.checks import check_number

VARIANTS = ("exp3", "smoothed_mean")


def exploration(t: int, k: int) -> float:
    """ε_t = min(1/K, √(ln K / (K·t))) for t >= 1."""
    return min(1.0 / k, math.sqrt(math.log(k) / (k * max(t, 1))))


@register("odm")
class ODM(EveryStepPolicy):
    """Online data mixing: a bandit over domains rewarded by their training loss.

    Args:
        variant: ``exp3`` or ``smoothed_mean``.
        gamma: smoothing of the rewards, in [0, 1) (paper: 0.9).
    """

    def __init__(
        self, domains: list[str], *, token_counts: Mapping[str, int], variant: str = "exp3", gamma: float = 0.9
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        if variant not in VARIANTS:
            raise ValueError(f"odm: `variant` must be one of {list(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.gamma = check_number(gamma, "odm: `gamma`", 0.0, 1.0)
        self._live = np.array([self.token_counts[d] > 0 for d in self.domains])
        if not self._live.any():
            raise ValueError("odm: no domain has training tokens")
        k = int(self._live.sum())
        self._reward = np.zeros(len(self.domains)) if variant == "exp3" else np.where(self._live, 1.0, 0.0)
        self._pi = self._live / k
        self.t = 0  # steps of feedback taken

    def update(self, feedback: Feedback) -> dict[str, float] | None:
        losses = feedback.train_loss()
        seen = [i for i, d in enumerate(self.domains) if d in losses and self._live[i]]
        if not seen:
            self.skip(feedback.step, "report has no domain with tokens")
            return None
        for i in seen:
            r = losses[self.domains[i]]
            gain = r / self._pi[i] if self.variant == "exp3" else math.exp(min(r, 700.0))
            self._reward[i] = self.gamma * self._reward[i] + (1.0 - self.gamma) * gain
        self.t += 1
        k = int(self._live.sum())
        eps_now, eps_prev = exploration(self.t + 1, k), exploration(self.t, k)
        if self.variant == "exp3":
            logits = np.where(self._live, eps_prev * self._reward, -np.inf)
            base = np.exp(logits - logits[self._live].max())
        else:
            base = np.where(self._live, self._reward, 0.0)
        base /= base.sum()
        self._pi = np.where(self._live, (1.0 - k * eps_now) * base + eps_now, 0.0)
        return self.weights()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reward": self._reward.tolist(), "pi": self._pi.tolist(), "t": self.t}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._reward = np.array(state["reward"], np.float64)
        self._pi = np.array(state["pi"], np.float64)
        self.t = int(state["t"])
