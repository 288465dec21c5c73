"""Trainer feedback: validate the bodies of `report`, `report_eval`, `report_alignment`; gather them per step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mixers.algorithms.base import REPORT, REPORT_ALIGNMENT, REPORT_EVAL, Feedback
from mixers.checks import check_int, check_number


class FeedbackError(ValueError):
    """A feedback request the server refuses (the message says why)."""


def _int(body: dict, key: str, lo: int = 0) -> int:
    v = check_int(body.get(key), f"`{key}`", error=FeedbackError)
    if v < lo:  # the range has its own message ("must be >= 0"), as before
        raise FeedbackError(f"`{key}` must be >= {lo}, got {v}")
    return v


def _per_domain(body: dict, key: str, domains: list[str], *, nonneg: bool, integer: bool = False) -> dict:
    v = body.get(key)
    if not isinstance(v, dict) or not v:
        raise FeedbackError(f"`{key}` must be a non-empty object of domain -> number, got {v!r}")
    unknown = sorted(set(v) - set(domains))
    if unknown:
        raise FeedbackError(f"`{key}`: unknown domain(s) {unknown}; known domains: {domains}")
    check = check_int if integer else check_number
    return {d: check(x, f"`{key}`[{d!r}]", 0 if nonneg else None, error=FeedbackError) for d, x in v.items()}


def _keys(body: Any, allowed: set[str], kind: str) -> dict:
    if not isinstance(body, dict):
        raise FeedbackError(f"{kind}: the body must be a JSON object, got {type(body).__name__}")
    extra = sorted(set(body) - allowed)
    if extra:
        raise FeedbackError(f"{kind}: unknown field(s) {extra}; allowed: {sorted(allowed)}")
    return body


def parse_report(
    body: Any, domains: list[str]
) -> tuple[int, int, int, dict[str, float], dict[str, int], dict[str, float] | None]:
    """``{"step", "rank", "world", "loss_sum": {d: float}, "tokens": {d: int}[, "ref_loss_sum": {d: float}]}``
    → its fields, checked (``ref_loss_sum``, a reference model's losses for DoReMi, may be absent: None)."""
    b = _keys(body, {"step", "rank", "world", "loss_sum", "tokens", "ref_loss_sum"}, REPORT)
    step, rank, world = _int(b, "step"), _int(b, "rank"), _int(b, "world", 1)
    if rank >= world:
        raise FeedbackError(f"{REPORT}: rank {rank} must be < world {world}")
    loss = _per_domain(b, "loss_sum", domains, nonneg=True)
    tokens = _per_domain(b, "tokens", domains, nonneg=True, integer=True)
    if set(loss) != set(tokens):
        raise FeedbackError(
            f"{REPORT}: `loss_sum` and `tokens` must name the same domains, got {sorted(loss)} and {sorted(tokens)}"
        )
    ref = None
    if b.get("ref_loss_sum") is not None:
        ref = _per_domain(b, "ref_loss_sum", domains, nonneg=True)
        if set(ref) != set(loss):
            raise FeedbackError(
                f"{REPORT}: `ref_loss_sum` must name the domains of `loss_sum`, got {sorted(ref)} and {sorted(loss)}"
            )
    return step, rank, world, loss, tokens, ref


def parse_eval(body: Any, domains: list[str]) -> tuple[int, dict[str, float]]:
    """``{"step", "loss": {d: float}}`` (mean held-out loss per domain) → its fields, checked."""
    b = _keys(body, {"step", "loss", "rank"}, REPORT_EVAL)
    return _int(b, "step"), _per_domain(b, "loss", domains, nonneg=True)


def parse_alignment(body: Any, domains: list[str]) -> tuple[int, dict[str, float]]:
    """``{"step", "alignment": {d: float}}`` (any finite reals) → its fields, checked."""
    b = _keys(body, {"step", "alignment", "rank"}, REPORT_ALIGNMENT)
    return _int(b, "step"), _per_domain(b, "alignment", domains, nonneg=False)


@dataclass
class StepFeedback:
    """Everything reported for one step so far: `report` per rank, `report_eval` and
    `report_alignment` once each. Per-rank values are kept so the sums an algorithm sees
    do not depend on the order ranks arrived in (``math.fsum`` is exactly rounded)."""

    step: int
    #: rank -> (loss_sum, tokens, ref_loss_sum or None)
    reports: dict[int, tuple[dict[str, float], dict[str, int], dict[str, float] | None]] = field(default_factory=dict)
    eval_loss: dict[str, float] | None = None
    alignment: dict[str, float] | None = None

    @property
    def ranks(self) -> set[int]:
        return set(self.reports)

    def add_report(
        self, rank: int, loss: dict[str, float], tokens: dict[str, int], ref: dict[str, float] | None = None
    ) -> None:
        if rank in self.reports:
            raise FeedbackError(f"{REPORT}: rank {rank} already reported step {self.step}")
        self.reports[rank] = (loss, tokens, ref)

    def set_once(self, kind: str, values: dict[str, float]) -> None:
        attr = "eval_loss" if kind == REPORT_EVAL else "alignment"
        if getattr(self, attr) is not None:
            raise FeedbackError(f"{kind}: step {self.step} was already reported")
        setattr(self, attr, values)

    def has(self, kind: str, world: int | None) -> bool:
        if kind == REPORT:
            return world is not None and set(self.reports) >= set(range(world))
        return (self.eval_loss if kind == REPORT_EVAL else self.alignment) is not None

    def sums(self) -> tuple[dict[str, float], dict[str, int], dict[str, float] | None]:
        """Per-domain loss sums, token counts and reference-loss sums over the ranks that reported
        (reference sums only when every rank sent them)."""
        domains = sorted({d for r in self.reports.values() for d in r[0]})
        loss = {d: math.fsum(r[0].get(d, 0.0) for r in self.reports.values()) for d in domains}
        tokens = {d: sum(r[1].get(d, 0) for r in self.reports.values()) for d in domains}
        ref = None
        if self.reports and all(r[2] is not None for r in self.reports.values()):
            ref = {d: math.fsum(r[2].get(d, 0.0) for r in self.reports.values()) for d in domains}
        return loss, tokens, ref

    def to_feedback(self, kinds: frozenset[str]) -> Feedback:
        """The :class:`Feedback` an algorithm sees: only ``kinds``, the rest None."""
        loss, tokens, ref = self.sums() if REPORT in kinds else (None, None, None)
        return Feedback(
            step=self.step,
            loss_sum=loss,
            tokens=tokens,
            ref_loss_sum=ref,
            eval_loss=dict(self.eval_loss) if REPORT_EVAL in kinds and self.eval_loss is not None else None,
            alignment=dict(self.alignment) if REPORT_ALIGNMENT in kinds and self.alignment is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "reports": {
                str(r): {"loss_sum": v[0], "tokens": v[1], **({"ref_loss_sum": v[2]} if v[2] is not None else {})}
                for r, v in sorted(self.reports.items())
            },
            "eval_loss": self.eval_loss,
            "alignment": self.alignment,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepFeedback:
        reports = {
            int(r): (
                {k: float(x) for k, x in v["loss_sum"].items()},
                {k: int(x) for k, x in v["tokens"].items()},
                None if v.get("ref_loss_sum") is None else {k: float(x) for k, x in v["ref_loss_sum"].items()},
            )
            for r, v in d.get("reports", {}).items()
        }
        return cls(step=int(d["step"]), reports=reports, eval_loss=d.get("eval_loss"), alignment=d.get("alignment"))
