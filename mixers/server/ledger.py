"""The engine's bookkeeping: the algorithm, the weight schedule, the feedback received per step,
the steps closed, the state of a step, and the tokens served.

Nothing here waits or locks: :class:`~mixers.server.engine.MixerEngine` calls it holding its
lock, and does the waiting (for feedback, for a step to be produced) itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixers.algorithms import build, takes
from mixers.algorithms.base import REPORT, REPORT_EVAL, MixingAlgorithm, normalize_weights
from mixers.server.caps import check_caps, limits
from mixers.server.feedback import FeedbackError, StepFeedback
from mixers.server.sampler import slot_domains
from mixers.server.state import Schedule, make_state

if TYPE_CHECKING:
    from mixers.server.engine import MixerConfig

logger = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """What the state at the start of a step needs beyond the schedule."""

    cursors: np.ndarray
    schedule_len: int
    algo_state: dict[str, Any]
    closed_through: int


class Ledger:
    """What the mixer decided and was told: the algorithm and its state, the weight schedule, the
    feedback received per step, the last closed step, the trainer's world size, the last losses.

    Epoch caps (:mod:`mixers.server.caps`): before producing a step the engine gives the ledger the
    cursors there (:meth:`apply_caps`); a domain that has reached its cap gets weight 0 from then on
    (a schedule entry with reason ``epoch_cap:<domain>``, the others renormalised), and so does every
    weight the algorithm sets later.

    Args:
        domains: the served domains, sorted.
        train_tokens: train tokens per domain.
        config: what is served.
        state: a checked state to resume from, or None for a fresh run.
    """

    def __init__(
        self, domains: list[str], train_tokens: dict[str, int], config: MixerConfig, state: dict[str, Any] | None
    ) -> None:
        self.domains = domains
        self.train_tokens = train_tokens
        self.config = config
        params = dict(config.mixer_params)
        if config.total_steps is not None and takes(config.mixer, "total_steps"):
            params.setdefault("total_steps", config.total_steps)  # the mixer params win (null: no planning)
        self.algorithm: MixingAlgorithm = build(config.mixer, domains, train_tokens, **params)
        self.caps = check_caps(config.epoch_caps, domains)
        self.limits = limits(self.caps, domains, train_tokens, config.seq_len) if self.caps else None
        self.full: frozenset[str] = frozenset()  # domains at their cap at the step being produced
        if state is None:
            init = self.checked(self.algorithm.weights(), f"{config.mixer}.weights()")
            self.schedule = Schedule([{"step": 0, "weights": init, "reason": f"init:{config.mixer}"}])
            self.closed = -1
            self.feedback: dict[int, StepFeedback] = {}
            self.world: int | None = None
        else:
            self.algorithm.load_state_dict(state["mixer"].get("state", {}))
            self.schedule = Schedule(state["schedule"])
            for e in self.schedule.entries:
                self.checked(e["weights"], f"state schedule at step {e['step']}")
            self.closed = int(state.get("closed_through", int(state["step"]) - config.feedback_lag))
            self.feedback = {int(f["step"]): StepFeedback.from_dict(f) for f in state.get("feedback", [])}
            # keep the old world size only while partial `report`s from its ranks are pending;
            # otherwise a resumed job may come back with another number of ranks
            pending = any(f.reports for f in self.feedback.values())
            self.world = state.get("world") if pending else None
        self.algo_state = _copy(self.algorithm.state_dict())
        self.last_loss: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}

    # ------------------------------------------------------------------ the schedule
    def checked(self, weights: dict[str, float], where: str) -> dict[str, float]:
        w = normalize_weights(weights, self.domains, where)
        empty = [d for d in self.domains if w[d] > 0 and self.train_tokens[d] == 0]
        if empty:
            raise ValueError(f"{where}: positive weight on domain(s) {empty} that have no training tokens")
        return w

    def apply_caps(self, t: int, cursors: np.ndarray) -> None:
        """Before producing step ``t`` (cursors at its start): note which domains are at their cap and, if
        the weights in force still serve one, zero it from ``t`` on (reason ``epoch_cap:<domains>``).
        Weights the algorithm sets from ``t`` on are then masked too (:meth:`masked`)."""
        if self.limits is None:
            return
        self.full = frozenset(d for d, c, n in zip(self.domains, cursors.tolist(), self.limits.tolist()) if c >= n)
        e = self.schedule.entry(t)
        hit = sorted(d for d in self.full if e["weights"][d] > 0)
        if hit:
            w = self.masked(e["weights"], f"step {t}")
            self.schedule.add(t, w, f"epoch_cap:{','.join(hit)}", bool(e.get("exact", False)))
            logger.info("step %d: weights %s (epoch cap reached: %s)", t, _fmt(w), ", ".join(hit))

    def room(self, cursors: np.ndarray | None) -> np.ndarray | None:
        """Sequences each domain may still be served from ``cursors`` on (None: no caps, or unknown cursors)."""
        if self.limits is None or cursors is None:
            return None
        return np.maximum(self.limits - cursors, 0)

    def masked(self, weights: dict[str, float], where: str) -> dict[str, float]:
        """``weights`` with the domains at their cap set to 0 and the rest renormalised."""
        if not self.full or not any(weights[d] > 0 for d in self.full):
            return weights
        out = {d: 0.0 if d in self.full else w for d, w in weights.items()}
        total = sum(out.values())
        if total <= 0:
            caps = ", ".join(f"{d} {self.caps[d]:g}" for d in sorted(self.full))
            raise ValueError(f"{where}: every domain with weight > 0 has reached its epoch cap (epochs: {caps})")
        return {d: w / total for d, w in out.items()}

    def weights_at(self, step: int) -> tuple[np.ndarray, bool]:
        """The weights in force at ``step`` as a vector in domain order, and whether they are exact counts."""
        e = self.schedule.entry(step)
        return np.array([e["weights"][d] for d in self.domains], np.float64), bool(e.get("exact", False))

    def apply_plan(self, t: int) -> None:
        """Record the algorithm's planned weights for step ``t`` if they differ from the schedule's."""
        p = self.algorithm.plan(t)
        if p is None:
            return
        w = self.masked(self.checked(p.weights, f"{self.config.mixer}.plan({t})"), f"{self.config.mixer}.plan({t})")
        e = self.schedule.entry(t)
        if w != e["weights"] or p.exact != bool(e.get("exact", False)):
            self.schedule.add(t, w, p.reason, p.exact)
            logger.info("step %d: weights %s (%s%s)", t, _fmt(w), p.reason, ", exact" if p.exact else "")

    def due(self, step: int) -> list[str]:
        """Measurements the trainer owes after training on ``step`` (``report_eval``, ``report_alignment``);
        sent with the step's batch. ``report`` is not listed: a trainer sends it every step."""
        return sorted(self.algorithm.needs(step) - {REPORT})

    # ------------------------------------------------------------------ closing steps
    def to_close(self, c: int) -> frozenset[str] | None:
        """The feedback kinds closing step ``c`` needs (maybe none), or None if there is nothing to close."""
        if c < 0 or c <= self.closed:
            return None
        needs = frozenset(self.algorithm.needs(c))
        if not needs <= self.algorithm.feedback_kinds:
            raise RuntimeError(f"{self.config.mixer}.needs({c}) = {sorted(needs)} is not within its feedback_kinds")
        return needs

    def has(self, c: int, needs: frozenset[str]) -> bool:
        """Whether the feedback ``needs`` of step ``c`` has all arrived."""
        fb = self.feedback.setdefault(c, StepFeedback(c))
        return all(fb.has(k, self.world) for k in needs)

    def close(self, c: int, needs: frozenset[str]) -> None:
        """Give the algorithm the feedback ``needs`` of step ``c`` (arrived: see :meth:`has`); new weights
        apply from ``c + feedback_lag``."""
        if needs:
            new = self.algorithm.update(self.feedback[c].to_feedback(needs))
            self.algo_state = _copy(self.algorithm.state_dict())
            if new is not None:
                at = c + self.config.feedback_lag
                where = f"{self.config.mixer}.update() at step {c}"
                w = self.masked(self.checked(new, where), where)
                if w != self.schedule.at(at):
                    self.schedule.add(at, w, f"{self.config.mixer}@{c}")
                    logger.info("step %d: weights %s (%s@%d)", at, _fmt(w), self.config.mixer, c)
        self.closed = c

    def missing(self, c: int) -> dict[str, Any]:
        """What closing step ``c`` still waits for: feedback ``kinds`` and the ranks whose `report` is missing."""
        fb = self.feedback.get(c, StepFeedback(c))
        needs = sorted(self.algorithm.needs(c))
        missing_ranks = sorted(set(range(self.world or 1)) - fb.ranks) if REPORT in needs else []
        return {"kinds": [k for k in needs if not fb.has(k, self.world)], "missing_ranks": missing_ranks}

    def forget_before(self, step: int) -> None:
        """Drop the feedback of steps before ``step``."""
        for s in [s for s in self.feedback if s < step]:
            del self.feedback[s]

    # ------------------------------------------------------------------ feedback
    def check_world(self, world: int) -> None:
        """Refuse a `report` whose world does not divide the global batch or is not the server's."""
        B = self.config.global_batch
        if B % world:
            raise FeedbackError(f"{REPORT}: world {world} must divide global_batch {B}")
        if self.world is not None and world != self.world:
            raise FeedbackError(f"{REPORT}: world {world} differs from this server's world {self.world}")

    def check_tokens(
        self, step: int, rank: int, world: int, tokens: dict[str, int], cursors: np.ndarray | None = None
    ) -> None:
        """Refuse a `report` that claims more tokens of a domain than ``rank``'s slice of ``step`` holds
        (fewer is fine: a trainer may mask positions). With epoch caps the slices depend on the cursors at
        ``step``: without them (a step before a resumed server's first) the check is skipped."""
        if self.limits is not None and cursors is None:
            return
        B = self.config.global_batch
        try:
            weights, exact = self.weights_at(step)
        except ValueError:
            raise FeedbackError(f"{REPORT}: step {step} is before this server's schedule") from None
        per = B // world
        ids = slot_domains(self.config.seed, step, B, weights, exact, self.room(cursors))[rank * per : (rank + 1) * per]
        served = dict(zip(self.domains, (np.bincount(ids, minlength=len(self.domains)) * self.config.seq_len).tolist()))
        over = ", ".join(f"{d}: {n} > {served[d]}" for d, n in sorted(tokens.items()) if n > served[d])
        if over:
            raise FeedbackError(
                f"{REPORT}: `tokens` exceed what rank {rank} of {world} was served of step {step} ({over})"
            )

    def add_report(
        self,
        step: int,
        rank: int,
        world: int,
        loss: dict[str, float],
        tokens: dict[str, int],
        ref: dict[str, float] | None,
    ) -> None:
        """Record an accepted `report` (the first one fixes the world size)."""
        fb = self.feedback.get(step) or StepFeedback(step)
        fb.add_report(rank, loss, tokens, ref)
        if self.world is None:  # only an accepted report fixes the world
            self.world = world
        mean = {d: loss[d] / tokens[d] for d in loss if tokens[d] > 0}
        self.last_loss.update(mean)
        self.feedback[step] = fb

    def add_measurement(self, kind: str, step: int, values: dict[str, float]) -> None:
        """Record a `report_eval` or `report_alignment` (once per step)."""
        fb = self.feedback.get(step) or StepFeedback(step)
        fb.set_once(kind, values)
        if kind == REPORT_EVAL:
            self.last_eval.update(values)
        self.feedback[step] = fb

    def reports_complete(self, lo: int, hi: int) -> bool:
        """Whether every step in ``(lo, hi)`` that some rank reported has every rank's `report`."""
        return all(not fb.reports or fb.has(REPORT, self.world) for s, fb in self.feedback.items() if lo < s < hi)

    # ------------------------------------------------------------------ state
    def snapshot(self, cursors: np.ndarray) -> Snapshot:
        """The state at the start of the next step to produce, given the cursors there."""
        return Snapshot(cursors.copy(), len(self.schedule), self.algo_state, self.closed)

    def state(self, step: int, snap: Snapshot, corpus_digest: str) -> dict[str, Any]:
        """The mixer state at the start of ``step``, whose snapshot is ``snap``."""
        feedback = [self.feedback[s].to_dict() for s in sorted(self.feedback) if snap.closed_through < s < step]
        return make_state(
            seed=self.config.seed,
            step=step,
            domains=self.domains,
            cursors=dict(zip(self.domains, snap.cursors.tolist())),
            schedule=self.schedule.upto(step),
            mixer=self.config.mixer,
            mixer_params=self.config.mixer_params,
            algorithm_state=snap.algo_state,
            closed_through=snap.closed_through,
            feedback=feedback,
            config=self.config.recorded(),
            epoch_tokens=self.train_tokens,
            corpus=corpus_digest,
            world=self.world,
        )


class TokenMeter:
    """Tokens served per domain, and their rate over the last seconds (``status``'s ``tokens_per_s``)."""

    def __init__(self, domains: list[str]) -> None:
        self.domains = domains
        self.served = np.zeros(len(domains), np.int64)
        self._samples: deque[tuple[float, np.ndarray]] = deque(maxlen=120)

    def add(self, counts: np.ndarray) -> None:
        self.served += counts

    def sample(self) -> None:
        """Record the counters now (the server's monitor calls this about once a second)."""
        self._samples.append((time.monotonic(), self.served.copy()))

    def rates(self, window: float) -> dict[str, float]:
        """Tokens per second per domain between the last sample and the first within ``window`` s of it."""
        if len(self._samples) < 2:
            return dict.fromkeys(self.domains, 0.0)
        t1, c1 = self._samples[-1]
        t0, c0 = next(((t, c) for t, c in self._samples if t1 - t <= window), self._samples[0])
        if t0 == t1:
            t0, c0 = self._samples[-2]
        dt = max(t1 - t0, 1e-9)
        return {d: float(x) / dt for d, x in zip(self.domains, c1 - c0)}


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    """A deep, JSON-clean copy (checks the algorithm's state really is JSON)."""
    return json.loads(json.dumps(state))


def _fmt(weights: dict[str, float]) -> str:
    return " ".join(f"{d}={w:.3f}" for d, w in weights.items())
