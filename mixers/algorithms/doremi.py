"""DoReMi's online reweighting (Xie et al. 2023): sample more where the model lags a reference.

The trainer runs a reference model (trained beforehand, e.g. on the stratified mixture)
on the same sequences and sends its losses with each ``report`` (``ref_loss_sum``;
``MixtureStream.report(..., reference_losses=...)``). Every step, per domain i in the batch:

    s_i = max(loss_i − ref_loss_i, 0)          (excess loss per token)
    log α_i ← log α_i + η·s_i;  α ← softmax(log α)
    α ← (1 − ε)·α + ε/k

Domains absent from the step keep their log-weight. ``average`` (DoReMi's output mixture
for a final run) is kept in the state alongside the served α.

Feedback: ``report`` with ``ref_loss_sum``, every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mixers.algorithms.base import REPORT, Feedback, MixingAlgorithm, register
from mixers.checks import check_number


@register("doremi")
class DoReMi(MixingAlgorithm):
    """Excess-loss reweighting against a reference model's losses.

    Args:
        eta: step size of the exponentiated update (paper: 1).
        eps: smoothing toward uniform, in [0, 1) (paper: 1e-3).
    """

    feedback_kinds = frozenset({REPORT})

    def __init__(
        self, domains: list[str], *, token_counts: Mapping[str, int], eta: float = 1.0, eps: float = 1e-3
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        self.eta = check_number(eta, "doremi: `eta`", 0.0)
        self.eps = check_number(eps, "doremi: `eps`", 0.0, 1.0)
        self._live = np.array([self.token_counts[d] > 0 for d in self.domains])
        if not self._live.any():
            raise ValueError("doremi: no domain has training tokens")
        self._log_alpha = np.where(self._live, 0.0, -np.inf)
        self._alpha = self._live / self._live.sum()
        self._sum = np.zeros(len(self.domains))
        self.t = 0

    def needs(self, step: int) -> frozenset[str]:
        return frozenset({REPORT})

    def weights(self) -> dict[str, float]:
        return dict(zip(self.domains, self._alpha.tolist()))

    def average(self) -> dict[str, float]:
        """The mean of the served weights over the updates so far (DoReMi's tuned mixture)."""
        avg = self._sum / self.t if self.t else self._alpha
        return dict(zip(self.domains, avg.tolist()))

    def update(self, feedback: Feedback) -> dict[str, float] | None:
        loss, ref = feedback.train_loss(), feedback.reference_loss()
        if not ref:
            self.skip(feedback.step, "report carries no ref_loss_sum (send reference_losses with every report)")
            return None
        seen = [i for i, d in enumerate(self.domains) if d in loss and d in ref and self._live[i]]
        if not seen:
            self.skip(feedback.step, "report has no domain with tokens")
            return None
        for i in seen:
            d = self.domains[i]
            self._log_alpha[i] += self.eta * max(loss[d] - ref[d], 0.0)
        live = self._log_alpha[self._live]
        self._log_alpha[self._live] = live - live.max()  # keep the logits bounded; softmax is unchanged
        alpha = np.where(self._live, np.exp(self._log_alpha), 0.0)
        alpha /= alpha.sum()
        k = int(self._live.sum())
        self._alpha = np.where(self._live, (1.0 - self.eps) * alpha + self.eps / k, 0.0)
        self._sum += self._alpha
        self.t += 1
        return self.weights()

    def state_dict(self) -> dict[str, Any]:
        log_alpha = [x if np.isfinite(x) else None for x in self._log_alpha.tolist()]
        return {
            **super().state_dict(),
            "log_alpha": log_alpha,
            "alpha": self._alpha.tolist(),
            "sum": self._sum.tolist(),
            "t": self.t,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._log_alpha = np.array([-np.inf if x is None else x for x in state["log_alpha"]], np.float64)
        self._alpha = np.array(state["alpha"], np.float64)
        self._sum = np.array(state["sum"], np.float64)
        self.t = int(state["t"])
