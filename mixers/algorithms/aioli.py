"""Aioli (Chen et al. 2024, HazyResearch/aioli): learn the mixing law's interaction matrix online.

Training is cut into rounds of ``update_every`` steps. Each round opens with LearnParams:
``lp_rounds`` random permutations of the k domains; for each domain j in that order the
trainer trains ``lp_steps`` steps on the smoothed one-hot mixture p_j (``one_hot_factor``
on j, the rest spread evenly), served with exact per-batch counts, and the per-domain
held-out loss drop over those steps is added to column j of G. Then, with W the k×k
matrix whose rows are the probe mixtures, A[i] = solve(W, G[i] / lp_rounds): A[i, j] is
how much a step of domain j lowers domain i's loss. Optionally A is shifted to be
non-negative and scaled to sum 1; with ``ema`` the smoothed Ā = (1 − ema)·A + ema·Ā_prev
gives w = exp(η·Ā.sum(0)), without it w ← w·exp(η·A.sum(0)). The rest of the round trains
on w / Σw.

The probe budget follows the run's length. With ``total_steps`` (the server passes its
``total_steps``; ``mixers.train`` its ``--steps``) the first round starts after ``warmup``
= a third of the run on the initial weights, and LearnParams may take ``probe_fraction`` (10%)
of the run: one permutation (``lp_rounds`` 1) of ``lp_steps`` = min(reference, budget / k)
steps per domain, repeated in as many rounds as the budget pays for, spread evenly over the
rest of the run; no round starts that would not end before ``total_steps``. The reference
repository instead probes from step 0 with a fixed round length, which spends 30–70% of
every round probing for k ≥ 3 (k = 7: 140 of 200 steps); BENCHMARKS.md has the measurements
behind these defaults (probes in the first steps of a small model cost far more than later
ones). Without ``total_steps`` the reference timetable applies (k = 2's, or k = 7's for k ≥ 3;
``warmup`` 1).
η defaults to k: A is normalised to sum 1, so its column sums average 1/k and η = k keeps
the spread of the exploit weights independent of k (the reference's η ≤ 1 keeps them within
a factor e of uniform).

Feedback: ``report_eval`` (per-domain held-out loss) after the step before each round and
after every probe segment — ``lp_rounds·k + 1`` evals per round. The weights learnt at the
end of LearnParams apply ``feedback_lag`` steps later; until then the previous round's
weights stay in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mixers.algorithms.base import REPORT_EVAL, Feedback, MixingAlgorithm, Planned, register
from mixers.checks import check_int, check_number
from mixers.hashing import SALT_AIOLI, key64, permutation

#: reference settings from the Aioli repository by number of domains (k >= 3 uses k = 7's); ema is 0.1 in both
REFERENCE = {
    2: {"lp_rounds": 4, "lp_steps": 4, "eta": 0.2, "update_every": 250, "one_hot_factor": 0.625},
    7: {"lp_rounds": 2, "lp_steps": 10, "eta": 1.0, "update_every": 200, "one_hot_factor": 0.75},
}
#: with ``total_steps``: share of the run on the initial weights before the first round
WARMUP_FRACTION = 1 / 3
#: with ``total_steps``: default share of the run spent in LearnParams
PROBE_FRACTION = 0.1


def probe_matrix(k: int, one_hot_factor: float) -> np.ndarray:
    """W: row j is the smoothed one-hot mixture probing domain j."""
    off = (1.0 - one_hot_factor) / (k - 1)
    return np.full((k, k), off) + np.eye(k) * (one_hot_factor - off)


def solve_interactions(gain: np.ndarray, one_hot_factor: float) -> np.ndarray:
    """A with ``A[i] = solve(W, gain[i])``: the per-step effect of each domain on each domain's loss."""
    w = probe_matrix(gain.shape[0], one_hot_factor)
    return np.linalg.solve(w, gain.T).T


def normalize_interactions(a: np.ndarray) -> np.ndarray:
    """Shift A so its minimum is 0 (if negative) and scale it to sum 1 (Aioli's ``normalize_A``)."""
    a = a - min(a.min(), 0.0)
    total = a.sum()
    return a / total if total > 0 else np.full_like(a, 1.0 / a.size)


def plan_rounds(
    k: int,
    total_steps: int,
    probe_fraction: float,
    *,
    lp_rounds: int | None = None,
    lp_steps: int | None = None,
    update_every: int | None = None,
    warmup: int | None = None,
) -> dict[str, int]:
    """The timetable for a run of ``total_steps`` steps: settings given stay, the others follow the budget.

    ``warmup`` = a third of the run; a budget of ``probe_fraction · total_steps`` probe steps; ``lp_rounds``
    1; ``lp_steps`` = min(the reference's, budget / (lp_rounds·k)); as many rounds as the budget pays
    for, ``update_every`` = the steps after warmup / rounds. Returns lp_rounds, lp_steps, update_every,
    warmup and ``rounds``: the rounds that end by ``total_steps``. Raises ValueError naming the setting
    that leaves no room.
    """
    ref = REFERENCE[2 if k == 2 else 7]
    warmup = max(1, round(WARMUP_FRACTION * total_steps)) if warmup is None else warmup
    budget = int(probe_fraction * total_steps)
    lp_rounds = 1 if lp_rounds is None else lp_rounds
    if lp_steps is None:
        lp_steps = min(ref["lp_steps"], budget // (lp_rounds * k))
        if lp_steps < 1:
            raise ValueError(
                f"aioli: a probe budget of {budget} steps (`probe_fraction` {probe_fraction} of `total_steps` "
                f"{total_steps}) cannot probe each of the {k} domains once; raise `probe_fraction` or set `lp_steps`"
            )
    per_round = lp_rounds * k * lp_steps
    if update_every is None:
        update_every = max(2, (total_steps - warmup) // max(1, budget // per_round))
    rounds = max(0, (total_steps - warmup) // update_every)
    if rounds == 0:
        raise ValueError(
            f"aioli: no round of {update_every} steps (`update_every`) fits in `total_steps` {total_steps} "
            f"after `warmup` {warmup}"
        )
    return {"lp_rounds": lp_rounds, "lp_steps": lp_steps, "update_every": update_every, "warmup": warmup,
            "rounds": rounds}  # fmt: skip


@register("aioli")
class Aioli(MixingAlgorithm):
    """Aioli: probe each domain, estimate the interaction matrix, exponentiated-gradient weights.

    Args:
        lp_rounds: permutations of the domains probed per round.
        lp_steps: steps per probe segment.
        eta: step size of the exponentiated update (default: k with ``normalize``, else the reference's).
        ema: smoothing of A across rounds, in [0, 1) (both reference settings: 0.1), or
            ``None`` for the multiplicative update.
        update_every: steps per round (LearnParams plus training on the learnt weights).
        one_hot_factor: weight of the probed domain in its probe mixture (> 1/k).
        normalize: shift and scale A before the update (Aioli's ``normalize_A``).
        warmup: steps on the initial weights before the first round (>= 1: the first
            round's baseline eval is taken after step ``warmup - 1``).
        total_steps: the run's length (the server passes it when it knows it): the timetable
            is planned by :func:`plan_rounds` and no round starts that would not end in time.
        probe_fraction: with ``total_steps``: the share of the run spent in LearnParams.
        seed: seeds the probe order.
    Unset settings (``None``) follow ``total_steps`` when it is known; otherwise they take Aioli's
    reference values for 2 domains, or for 7 when k >= 3 (``warmup`` 1).
    """

    feedback_kinds = frozenset({REPORT_EVAL})

    def __init__(
        self,
        domains: list[str],
        *,
        token_counts: Mapping[str, int],
        lp_rounds: int | None = None,
        lp_steps: int | None = None,
        eta: float | None = None,
        ema: float | None = 0.1,
        update_every: int | None = None,
        one_hot_factor: float | None = None,
        normalize: bool = True,
        warmup: int | None = None,
        total_steps: int | None = None,
        probe_fraction: float = PROBE_FRACTION,
        seed: int = 0,
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        k = len(self.domains)
        if k < 2:
            raise ValueError("aioli: needs at least 2 domains")
        empty = [d for d, n in self.token_counts.items() if n == 0]
        if empty:
            raise ValueError(f"aioli: probes every domain, but {empty} have no training tokens")
        ref = REFERENCE[2 if k == 2 else 7]
        for name, v in (("lp_rounds", lp_rounds), ("lp_steps", lp_steps), ("warmup", warmup)):
            if v is not None:
                check_int(v, f"aioli: `{name}`", 1)
        if update_every is not None:
            check_int(update_every, "aioli: `update_every`", 2)
        self.total_steps = None if total_steps is None else check_int(total_steps, "aioli: `total_steps`", 1)
        self.probe_fraction = check_number(probe_fraction, "aioli: `probe_fraction`", 0.0, 1.0)
        if self.total_steps is not None:
            t = plan_rounds(
                k, self.total_steps, self.probe_fraction,
                lp_rounds=lp_rounds, lp_steps=lp_steps, update_every=update_every, warmup=warmup,
            )  # fmt: skip
            lp_rounds, lp_steps, update_every, warmup = t["lp_rounds"], t["lp_steps"], t["update_every"], t["warmup"]
            self.rounds: int | None = t["rounds"]
        else:
            lp_rounds = ref["lp_rounds"] if lp_rounds is None else lp_rounds
            lp_steps = ref["lp_steps"] if lp_steps is None else lp_steps
            update_every = ref["update_every"] if update_every is None else update_every
            warmup = 1 if warmup is None else warmup
            self.rounds = None
        self.lp_rounds, self.lp_steps, self.update_every, self.warmup = lp_rounds, lp_steps, update_every, warmup
        self.seed = check_int(seed, "aioli: `seed`", 0)
        self.normalize = bool(normalize)
        if eta is None:
            eta = float(k) if self.normalize else ref["eta"]
        self.eta = check_number(eta, "aioli: `eta`", 0.0)
        self.ema = None if ema is None else check_number(ema, "aioli: `ema`", 0.0, 1.0)
        self.one_hot_factor = check_number(
            ref["one_hot_factor"] if one_hot_factor is None else one_hot_factor, "aioli: `one_hot_factor`", 0.0
        )
        if not 1.0 / k < self.one_hot_factor <= 1.0:
            raise ValueError(
                f"aioli: `one_hot_factor` must be in (1/k, 1] = ({1 / k:.3f}, 1], got {self.one_hot_factor}"
            )
        self.probe_steps = self.lp_rounds * k * self.lp_steps
        if self.probe_steps >= self.update_every:
            raise ValueError(
                f"aioli: a round of {self.update_every} steps (`update_every`) must be longer than its "
                f"LearnParams phase (lp_rounds·k·lp_steps = {self.probe_steps})"
            )
        self._w = np.ones(k)  # the unnormalised exploit weights
        self._ema_a: np.ndarray | None = None
        self._gain = np.zeros((k, k))
        self._prev: np.ndarray | None = None  # held-out losses at the start of the current probe segment
        self._round_ok = False  # a baseline was taken this round and no probe eval was unusable
        self.rounds_done = 0
        self.updated_at: int | None = None
        self.last_a: list[list[float]] | None = None

    # ------------------------------------------------------------------ timetable
    def _position(self, step: int) -> tuple[int, int] | None:
        """(round, position in round) of ``step``, or None during warmup. After the last planned round
        (``total_steps`` known) every step is past LearnParams: position ``update_every`` of that round."""
        u = step - self.warmup
        if u < 0:
            return None
        r, p = divmod(u, self.update_every)
        if self.rounds is not None and r >= self.rounds:
            return self.rounds - 1, self.update_every
        return r, p

    def probe_order(self, round_: int) -> list[int]:
        """Domain indices probed in ``round_``'s segments, in order (lp_rounds permutations)."""
        k = len(self.domains)
        return [
            int(j) for rep in range(self.lp_rounds) for j in permutation(key64(SALT_AIOLI, self.seed, round_, rep), k)
        ]

    def probe_weights(self, j: int) -> dict[str, float]:
        return dict(zip(self.domains, probe_matrix(len(self.domains), self.one_hot_factor)[j].tolist()))

    def plan(self, step: int) -> Planned | None:
        pos = self._position(step)
        if pos is None:
            return None
        r, p = pos
        if p < self.probe_steps:
            j = self.probe_order(r)[p // self.lp_steps]
            return Planned(self.probe_weights(j), f"aioli:probe:{self.domains[j]}", exact=True)
        reason = "aioli:init" if self.updated_at is None else f"aioli@{self.updated_at}"
        return Planned(self.weights(), reason)

    def needs(self, step: int) -> frozenset[str]:
        # an eval after the step before each segment boundary of LearnParams (and before the round)
        pos = self._position(step + 1)
        if pos is None:
            return frozenset()
        _, p = pos
        return frozenset({REPORT_EVAL}) if p % self.lp_steps == 0 and p <= self.probe_steps else frozenset()

    # ------------------------------------------------------------------ learning
    def weights(self) -> dict[str, float]:
        w = self._w / self._w.sum()
        return dict(zip(self.domains, w.tolist()))

    def update(self, feedback: Feedback) -> dict[str, float] | None:
        r, p = self._position(feedback.step + 1)  # needs() asked only for steps inside a round
        m = p // self.lp_steps  # evals taken so far this round, minus one
        losses = feedback.eval_loss or {}
        missing = [d for d in self.domains if d not in losses]
        if missing:
            self._round_ok = False
            self.skip(feedback.step, f"report_eval has no loss for {missing}; round {r} will not update the weights")
            return None
        loss = np.array([losses[d] for d in self.domains])
        if m == 0:
            self._gain[:] = 0.0
            self._round_ok = True
        elif self._round_ok and self._prev is not None:
            j = self.probe_order(r)[m - 1]
            self._gain[:, j] += self._prev - loss
        self._prev = loss
        if m == self.probe_steps // self.lp_steps:
            if not self._round_ok:
                self.skip(feedback.step, f"round {r}: LearnParams incomplete (a probe eval was missing)")
                return None
            self._learn(feedback.step)
        return None  # the new weights reach the batches through plan()

    def _learn(self, step: int) -> None:
        a = solve_interactions(self._gain / self.lp_rounds, self.one_hot_factor)
        self.last_a = a.tolist()
        if self.normalize:
            a = normalize_interactions(a)
        if self.ema is not None:
            self._ema_a = a if self._ema_a is None else (1 - self.ema) * a + self.ema * self._ema_a
            logits = self.eta * self._ema_a.sum(axis=0)
            self._w = np.exp(logits - logits.max())
        else:
            logits = np.log(self._w / self._w.sum()) + self.eta * a.sum(axis=0)
            self._w = np.exp(logits - logits.max())
        self.rounds_done += 1
        self.updated_at = step

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "w": self._w.tolist(),
            "ema_a": None if self._ema_a is None else self._ema_a.tolist(),
            "gain": self._gain.tolist(),
            "prev": None if self._prev is None else self._prev.tolist(),
            "round_ok": self._round_ok,
            "rounds_done": self.rounds_done,
            "updated_at": self.updated_at,
            "last_a": self.last_a,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._w = np.array(state["w"], np.float64)
        self._ema_a = None if state["ema_a"] is None else np.array(state["ema_a"], np.float64)
        self._gain = np.array(state["gain"], np.float64)
        self._prev = None if state["prev"] is None else np.array(state["prev"], np.float64)
        self._round_ok = bool(state["round_ok"])
        self.rounds_done = int(state["rounds_done"])
        self.updated_at = state["updated_at"]
        self.last_a = state.get("last_a")
