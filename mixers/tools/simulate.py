"""A simulated trainer whose losses follow a known mixing law, to try mixing algorithms in seconds.

A tool, not part of the mixer library: no model, no server, no torch.

The model's state is its exposure x (steps' worth of each domain seen so far); the loss of
domain i is L_i(x) = c_i + b_i·exp(−Σ_j A_ij·x_j / scale): A_ij says how much training
on domain j lowers domain i's loss (A is what Aioli estimates). :func:`run` drives an
algorithm through the server's protocol — close step t − lag with the feedback the
algorithm asked for, apply its plan, serve step t with the real sampler's draws — so an
algorithm (or a hyperparameter setting) can be checked against the known optimum before a
GPU is spent on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mixers.algorithms.base import REPORT, REPORT_ALIGNMENT, REPORT_EVAL, Feedback, MixingAlgorithm
from mixers.server.sampler import draw_domains, exact_counts
from mixers.server.state import Schedule


@dataclass(frozen=True)
class MixingLaw:
    """L_i(x) = c_i + b_i·exp(−(A·x)_i / scale) over exposures x (in steps)."""

    domains: list[str]
    c: np.ndarray
    b: np.ndarray
    a: np.ndarray
    scale: float = 100.0

    def losses(self, x: np.ndarray) -> np.ndarray:
        return self.c + self.b * np.exp(-(self.a @ x) / self.scale)

    def gains(self, x: np.ndarray, target: int) -> np.ndarray:
        """−∂L_target/∂x_j: how much a step of each domain lowers the target's loss (= ⟨g_j, g_target⟩
        for a model whose gradient step on domain j moves x_j)."""
        return self.b[target] * self.a[target] * np.exp(-(self.a[target] @ x) / self.scale) / self.scale

    def average_loss(self, p: np.ndarray, steps: int) -> float:
        """Mean loss over domains after ``steps`` steps of the static mixture ``p``."""
        return float(self.losses(np.asarray(p) * steps).mean())

    def best_static(self, steps: int, grid: int = 40) -> np.ndarray:
        """The static mixture with the lowest average loss after ``steps`` steps (simplex grid + refinement)."""
        k = len(self.domains)
        best, best_loss = np.full(k, 1.0 / k), self.average_loss(np.full(k, 1.0 / k), steps)
        rng = np.random.default_rng(0)
        for p in rng.dirichlet(np.ones(k), size=grid * k * k):
            loss = self.average_loss(p, steps)
            if loss < best_loss:
                best, best_loss = p, loss
        return best


@dataclass
class Trace:
    """What a simulated run served and measured."""

    weights: list[np.ndarray] = field(default_factory=list)  # weights in force per step
    exposure: np.ndarray | None = None
    final_losses: np.ndarray | None = None

    @property
    def average_loss(self) -> float:
        return float(self.final_losses.mean())


@dataclass
class SimulatedTrainer:
    """Trains by moving exposure: a step with ``n_i`` of ``B`` sequences from domain i adds ``n_i / B`` to x_i.

    Args:
        law: the mixing law.
        batch: sequences per step.
        tokens: tokens per sequence (for the token counts in ``report``).
        target: domain index whose gradient alignments ``report_alignment`` sends (DGA).
        reference_speed: the reference model's exposure grows as ``reference_speed·t/k``
            per domain (a stratified model trained longer): its losses go with ``report``.
        noise: standard deviation of the Gaussian noise on reported losses (relative, on alignments).
        seed: seeds the noise.
    """

    law: MixingLaw
    batch: int = 64
    tokens: int = 128
    target: int = 0
    reference_speed: float = 2.0
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.x = np.zeros(len(self.law.domains))
        self.t = 0
        self.rng = np.random.default_rng(self.seed)
        self.measured: dict[int, Feedback] = {}

    def _noisy(self, v: np.ndarray) -> np.ndarray:
        return v + self.rng.normal(0.0, self.noise, v.shape) if self.noise else v

    def step(self, counts: np.ndarray, due: frozenset[str]) -> None:
        """Train step ``t`` on ``counts`` sequences per domain; record its report and what is ``due``."""
        k, d = len(self.law.domains), self.law.domains
        train = self._noisy(self.law.losses(self.x))
        ref = self._noisy(self.law.losses(np.full(k, self.reference_speed * (self.t + 1) / k)))
        self.x = self.x + counts / counts.sum()
        live = [i for i in range(k) if counts[i] > 0]
        fb = Feedback(
            step=self.t,
            loss_sum={d[i]: float(train[i] * counts[i] * self.tokens) for i in live},
            tokens={d[i]: int(counts[i] * self.tokens) for i in live},
            ref_loss_sum={d[i]: float(ref[i] * counts[i] * self.tokens) for i in live},
        )
        if REPORT_EVAL in due:
            fb = _with(fb, eval_loss=dict(zip(d, self._noisy(self.law.losses(self.x)).tolist())))
        if REPORT_ALIGNMENT in due:
            gains = self.law.gains(self.x, self.target)
            gains = gains * (1 + self.rng.normal(0.0, self.noise, k)) if self.noise else gains
            fb = _with(fb, alignment=dict(zip(d, gains.tolist())))
        self.measured[self.t] = fb
        self.t += 1


def _with(fb: Feedback, **kw) -> Feedback:
    return Feedback(**{**fb.__dict__, **kw})


def run(algorithm: MixingAlgorithm, trainer: SimulatedTrainer, steps: int, lag: int = 4, seed: int = 0) -> Trace:
    """Serve ``steps`` steps to ``trainer`` under ``algorithm`` exactly as the server's engine does."""
    domains = algorithm.domains
    schedule = Schedule([{"step": 0, "weights": algorithm.weights(), "reason": "init"}])
    trace = Trace()
    for t in range(steps):
        c = t - lag
        if c >= 0 and (needs := algorithm.needs(c)):
            fb = trainer.measured[c].only(needs)
            new = algorithm.update(fb)
            if new is not None:
                schedule.add(t, new, f"{algorithm.name}@{c}")
        if (p := algorithm.plan(t)) is not None:
            schedule.add(t, p.weights, p.reason, p.exact)
        w = np.array([schedule.at(t)[d] for d in domains], np.float64)
        w /= w.sum()
        if schedule.exact_at(t):
            counts = exact_counts(w, trainer.batch)
        else:
            counts = np.bincount(draw_domains(seed, t, trainer.batch, w), minlength=len(domains))
        trainer.step(counts, algorithm.needs(t) - {REPORT})
        trace.weights.append(w)
    trace.exposure = trainer.x.copy()
    trace.final_losses = trainer.law.losses(trainer.x)
    return trace
