"""The mixing-algorithm interface every mixer implements, the feedback it receives, and the registry.

This module imports nothing of its package: the algorithms import it, and
:func:`mixers.algorithms.build` looks names up in :data:`REGISTRY` once they have.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mixers.checks import is_number

logger = logging.getLogger(__name__)

#: feedback kinds, named after the Flight actions that carry them
REPORT = "report"
REPORT_EVAL = "report_eval"
REPORT_ALIGNMENT = "report_alignment"
FEEDBACK_KINDS = (REPORT, REPORT_EVAL, REPORT_ALIGNMENT)

#: mixer name -> class
REGISTRY: dict[str, type[MixingAlgorithm]] = {}


def register(name: str):
    """Class decorator: make a mixing algorithm available as ``sluice serve --mixer name``."""

    def deco(cls: type[MixingAlgorithm]) -> type[MixingAlgorithm]:
        if name in REGISTRY:
            raise ValueError(f"mixing algorithm {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


@dataclass(frozen=True)
class Feedback:
    """What the trainer reported for one global step, summed over ranks.

    Only the kinds the algorithm asked for in :meth:`MixingAlgorithm.needs` are filled in;
    the others are ``None``. Domains the trainer did not mention are absent from the dicts.

    Attributes:
        step: the global step the feedback is about.
        loss_sum: ``report``: per-domain sum of token losses over every rank's sequences.
        tokens: ``report``: per-domain number of tokens those losses cover.
        eval_loss: ``report_eval``: per-domain mean held-out loss.
        alignment: ``report_alignment``: per-domain scalars, e.g. ⟨g_domain, g_target⟩ (DGA).
        ref_loss_sum: ``report`` (optional): per-domain sum of a reference model's token
            losses over the same tokens (DoReMi); ``None`` when no rank sent one.
    """

    step: int
    loss_sum: dict[str, float] | None = None
    tokens: dict[str, int] | None = None
    eval_loss: dict[str, float] | None = None
    alignment: dict[str, float] | None = None
    ref_loss_sum: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def train_loss(self) -> dict[str, float]:
        """Per-domain mean training loss per token (domains with zero tokens left out)."""
        if self.loss_sum is None or self.tokens is None:
            return {}
        return {d: self.loss_sum[d] / n for d, n in self.tokens.items() if n > 0 and d in self.loss_sum}

    def only(self, kinds: frozenset[str]) -> Feedback:
        """This feedback with only ``kinds`` filled in (what an algorithm that asked for them sees)."""
        report = REPORT in kinds
        return Feedback(
            step=self.step,
            loss_sum=self.loss_sum if report else None,
            tokens=self.tokens if report else None,
            ref_loss_sum=self.ref_loss_sum if report else None,
            eval_loss=self.eval_loss if REPORT_EVAL in kinds else None,
            alignment=self.alignment if REPORT_ALIGNMENT in kinds else None,
        )

    def reference_loss(self) -> dict[str, float]:
        """Per-domain mean reference-model loss per token over the same tokens (empty if none was sent)."""
        if self.ref_loss_sum is None or self.tokens is None:
            return {}
        return {d: self.ref_loss_sum[d] / n for d, n in self.tokens.items() if n > 0 and d in self.ref_loss_sum}


@dataclass(frozen=True)
class Planned:
    """Weights an algorithm fixes in advance for one step (see :meth:`MixingAlgorithm.plan`).

    Attributes:
        weights: domain -> weight (normalised by the server).
        reason: recorded in the schedule when the weights change, e.g. ``aioli:probe``.
        exact: give each domain exactly ``max(1, int(w·B))`` of the step's ``B`` sequences
            (rounded to fill the batch) instead of drawing each sequence's domain.
    """

    weights: dict[str, float]
    reason: str
    exact: bool = False


class MixingAlgorithm(ABC):
    """A mixing algorithm: the weights in force and how feedback moves them.

    The server owns the loop. Before producing global step ``t`` it *closes* step
    ``t - lag``: it asks :meth:`needs` which feedback kinds the algorithm wants for that
    step, waits until the trainer has sent them (``report`` from every rank,
    ``report_eval`` / ``report_alignment`` once), and calls :meth:`update` with exactly
    those. New weights it returns are recorded in the schedule for step ``t`` and apply
    from there. Steps are closed in order, one at a time, so an algorithm sees a
    deterministic sequence of feedback and the batches stay a pure function of (seed,
    step, schedule) — with the same feedback, a resumed or replicated server makes the
    same decisions.

    Feedback an algorithm may ask for, and how often (set by :meth:`needs`):

    - ``report``: per-domain training-loss sums and token counts for a step, from every
      rank (cheap; the client sends it every step). ODM, DoReMi: every step.
    - ``report_eval``: per-domain mean held-out loss (eval batches come from the
      ``holdout`` split). Aioli: at the end of each probe phase.
    - ``report_alignment``: per-domain scalars ⟨g_domain, g_target⟩ computed in the
      trainer. DGA: every ``T_r`` steps.

    Asking for a kind the trainer never sends stalls the server (it logs what it waits
    for), so algorithms ask only for what they use. :meth:`needs` and :meth:`update` must
    depend only on the algorithm's state and arguments: no clocks, no global RNGs.
    :meth:`needs` must moreover depend only on the step and the constructor's parameters:
    the server announces with each batch which measurements are due after it (the
    batch's ``due``), before that step is closed.

    Algorithms that steer the weights by a timetable (Aioli's probe phases) also
    implement :meth:`plan`: the server asks it for every step it produces, after closing
    step ``t - lag``, so a planned mixture applies exactly at its step and an exploit
    mixture learnt from step ``c``'s feedback applies from ``c + lag`` on.

    Feedback an algorithm cannot use (a domain missing from an eval, a step without
    tokens) must leave the weights unchanged and say why: log it and count it in the
    state (see :meth:`skip`).

    Subclasses implement ``__init__(domains, *, token_counts, **params)`` (validate params
    there, naming the parameter), :meth:`weights`, :meth:`state_dict` and
    :meth:`load_state_dict`; adaptive ones also :meth:`needs`, :meth:`update` and
    :attr:`feedback_kinds`. Register them with ``@register("name")``; a built-in one in a module
    that :mod:`mixers.algorithms` imports.

    Args:
        domains: the domains served, sorted.
        token_counts: train-split tokens per domain (what size-based mixers weigh by).
    """

    name: ClassVar[str] = ""
    #: version of this algorithm's state_dict layout
    state_version: ClassVar[int] = 1
    #: every kind :meth:`needs` may ever return (the server skips waiting for the others)
    feedback_kinds: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, domains: list[str], *, token_counts: Mapping[str, int]) -> None:
        if not domains:
            raise ValueError(f"{self.name}: no domains to mix")
        self.domains = list(domains)
        self.token_counts = {d: int(token_counts.get(d, 0)) for d in self.domains}
        self.skipped = 0  # feedback steps that left the weights unchanged (see skip)
        self.last_skip: dict[str, Any] | None = None

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """The algorithm's current mixture: a non-negative weight per domain (normalised by the server)."""

    def needs(self, step: int) -> frozenset[str]:
        """Feedback kinds required to close ``step`` (subset of ``FEEDBACK_KINDS``); empty: none."""
        return frozenset()

    def update(self, feedback: Feedback) -> dict[str, float] | None:
        """Take the feedback for one closed step; return new weights, or ``None`` to keep them."""
        return None

    def plan(self, step: int) -> Planned | None:
        """Weights fixed for ``step`` by the algorithm's timetable, or ``None`` to follow the schedule."""
        return None

    def skip(self, step: int, reason: str) -> None:
        """Record that the feedback of ``step`` left the weights unchanged, and why (logged, kept in state)."""
        logger.warning("%s: step %d: weights unchanged: %s", self.name, step, reason)
        self.skipped += 1
        self.last_skip = {"step": step, "reason": reason}

    def state_dict(self) -> dict[str, Any]:
        """A fresh JSON-serialisable dict of everything :meth:`update` depends on."""
        out: dict[str, Any] = {"version": self.state_version}
        if self.skipped:
            out["skipped"] = self.skipped
            out["last_skip"] = self.last_skip
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (read later-added keys with ``.get``)."""
        version = state.get("version", 1)
        if version > self.state_version:
            raise ValueError(f"{self.name}: state version {version} is newer than this code's {self.state_version}")
        if state.get("skipped"):
            self.skipped = int(state["skipped"])
            self.last_skip = dict(state["last_skip"])


def normalize_weights(weights: Mapping[str, float], domains: list[str], where: str) -> dict[str, float]:
    """Check ``weights`` (known domains, finite, non-negative, positive sum) and scale them to sum 1.

    Domains missing from ``weights`` get 0. Raises ValueError naming ``where`` and the problem.
    """
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise ValueError(f"{where}: unknown domain(s) {unknown}; known domains: {domains}")
    out = {}
    for d in domains:
        w = weights.get(d, 0.0)
        if not is_number(w) or w < 0:
            raise ValueError(f"{where}: weight for {d!r} must be a finite number >= 0, got {w!r}")
        out[d] = float(w)
    total = math.fsum(out.values())
    if total <= 0:
        raise ValueError(f"{where}: weights must have a positive sum, got {dict(weights)}")
    return {d: w / total for d, w in out.items()}


class EveryStepPolicy(MixingAlgorithm):
    """An algorithm that takes ``report`` for every step and keeps its mixture in ``self._pi``
    (an array over ``self.domains``): ODM and ADO."""

    feedback_kinds = frozenset({REPORT})
    _pi: Any

    def needs(self, step: int) -> frozenset[str]:
        return frozenset({REPORT})

    def weights(self) -> dict[str, float]:
        return dict(zip(self.domains, self._pi.tolist()))
