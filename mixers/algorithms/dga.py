"""DGA — dynamic gradient alignment (Fan, Grangier, Ablin 2024; GRAPE-style online reweighting).

Every ``every`` steps the trainer measures, for each training domain i, the alignment
a_i = ⟨g_i, g_target⟩ between the gradient of a small batch of domain i and the gradient
of a small batch of the target task, and sends the k scalars (gradients never leave the
trainer; :func:`mixers.trainer.utils.alignment_scores` computes them). Mirror descent on
the simplex then moves the weights toward the domains whose gradients help the target:

    α ← softmax(log α + μ·a)        (a scaled by max |a_i| when ``normalize``)
    α ← (1 − ε)·α + ε/k             (smoothing keeps every domain sampled)
    ᾱ ← β·ᾱ + (1 − β)·α              (EMA; ᾱ is served)

Feedback: ``report_alignment`` after steps ``every - 1, 2·every - 1, …``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mixers.algorithms.base import REPORT_ALIGNMENT, Feedback, MixingAlgorithm, register
from mixers.checks import check_int, check_number


def mirror_step(alpha: np.ndarray, scores: np.ndarray, mu: float, eps: float) -> np.ndarray:
    """One exponentiated-gradient step on the simplex, then ε-smoothing toward uniform."""
    logits = np.log(np.maximum(alpha, 1e-300)) + mu * scores
    new = np.exp(logits - logits.max())
    new /= new.sum()
    return (1.0 - eps) * new + eps / len(new)


@register("dga")
class DGA(MixingAlgorithm):
    """Dynamic gradient alignment toward a target task.

    Args:
        every: steps between alignment measurements (T_r; ≈10 in the paper).
        mu: mirror-descent step size.
        eps: smoothing toward uniform after each step, in [0, 1).
        ema: β of the moving average of the weights that is served, in [0, 1) (0: none).
        normalize: divide the alignments by their largest magnitude, so ``mu`` is the
            largest change of a log-weight per update whatever the gradients' scale.
    """

    feedback_kinds = frozenset({REPORT_ALIGNMENT})

    def __init__(
        self,
        domains: list[str],
        *,
        token_counts: Mapping[str, int],
        every: int = 10,
        mu: float = 0.5,
        eps: float = 0.05,
        ema: float = 0.5,
        normalize: bool = True,
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        self.every = check_int(every, "dga: `every`", 1)
        self.mu = check_number(mu, "dga: `mu`", 0.0)
        self.eps = check_number(eps, "dga: `eps`", 0.0, 1.0)
        self.ema = check_number(ema, "dga: `ema`", 0.0, 1.0)
        self.normalize = bool(normalize)
        self._live = np.array([self.token_counts[d] > 0 for d in self.domains])
        if not self._live.any():
            raise ValueError("dga: no domain has training tokens")
        self._alpha = self._live / self._live.sum()
        self._avg = self._alpha.copy()
        self.updates = 0

    def needs(self, step: int) -> frozenset[str]:
        return frozenset({REPORT_ALIGNMENT}) if (step + 1) % self.every == 0 else frozenset()

    def weights(self) -> dict[str, float]:
        return dict(zip(self.domains, self._avg.tolist()))

    def update(self, feedback: Feedback) -> dict[str, float] | None:
        values = feedback.alignment or {}
        live = [d for d, ok in zip(self.domains, self._live) if ok]
        missing = [d for d in live if d not in values]
        if missing:
            self.skip(feedback.step, f"report_alignment has no value for {missing}")
            return None
        scores = np.array([values.get(d, 0.0) for d in self.domains])
        if self.normalize:
            scale = np.abs(scores[self._live]).max()
            if scale == 0:
                self.skip(feedback.step, "every alignment is 0")
                return None
            scores = scores / scale
        alpha = mirror_step(self._alpha, scores, self.mu, self.eps)
        alpha = np.where(self._live, alpha, 0.0)
        self._alpha = alpha / alpha.sum()
        self._avg = self.ema * self._avg + (1.0 - self.ema) * self._alpha
        self.updates += 1
        return self.weights()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        return {**out, "alpha": self._alpha.tolist(), "avg": self._avg.tolist(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._alpha = np.array(state["alpha"], np.float64)
        self._avg = np.array(state["avg"], np.float64)
        self.updates = int(state["updates"])
