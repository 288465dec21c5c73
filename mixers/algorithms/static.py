"""Mixers that never move on feedback: user weights (static), uniform (stratified), size^(1/T) (temperature), and a
timetable of static mixtures (schedule)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from mixers.algorithms.base import MixingAlgorithm, Planned, normalize_weights, register


def parse_weights(spec: str | Mapping[str, float]) -> dict[str, float]:
    """Weights from a mapping, a JSON object (``'{"web": 0.7}'``) or ``web=0.7,code=0.3``."""
    if isinstance(spec, Mapping):
        return dict(spec)
    text = spec.strip()
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"weights: not valid JSON ({e.msg} at column {e.colno}): {spec!r}") from None
        if not isinstance(out, dict):
            raise ValueError(f"weights: expected a JSON object of domain -> weight, got {spec!r}")
        return out
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"weights: expected DOMAIN=WEIGHT[,DOMAIN=WEIGHT…], got {part!r} in {spec!r}")
    return out


@register("static")
class Static(MixingAlgorithm):
    """Fixed user weights. Needs no feedback.

    Args:
        weights: domain -> weight (a mapping, JSON text or ``a=0.5,b=0.5``); missing
            domains get 0; normalised to sum 1.
    """

    def __init__(
        self, domains: list[str], *, token_counts: Mapping[str, int], weights: str | Mapping[str, float] | None = None
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        if weights is None:
            raise ValueError("static: `weights` is required, e.g. --weights web=0.7,code=0.3")
        self._weights = normalize_weights(parse_weights(weights), self.domains, "static: weights")

    def weights(self) -> dict[str, float]:
        return dict(self._weights)


@register("stratified")
class Stratified(MixingAlgorithm):
    """Uniform over the domains that have training tokens. Needs no feedback."""

    def weights(self) -> dict[str, float]:
        live = [d for d in self.domains if self.token_counts[d] > 0] or self.domains
        return {d: (1.0 / len(live) if d in live else 0.0) for d in self.domains}


@register("temperature")
class Temperature(MixingAlgorithm):
    """Temperature sampling: w_d ∝ n_d^(1/T), n_d = train tokens of domain d. Needs no feedback.

    T = 1 samples in proportion to size; larger T flattens towards uniform (T → ∞);
    multilingual pretraining commonly uses T between 2 and 5.

    Args:
        temperature: T > 0.
    """

    def __init__(self, domains: list[str], *, token_counts: Mapping[str, int], temperature: float = 2.0) -> None:
        super().__init__(domains, token_counts=token_counts)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature: `temperature` must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        raw = {d: float(n) ** (1.0 / self.temperature) if n > 0 else 0.0 for d, n in self.token_counts.items()}
        self._weights = normalize_weights(raw, self.domains, "temperature: token counts")

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "temperature": self.temperature}


@register("schedule")
class Scheduled(MixingAlgorithm):
    """A timetable of static mixtures: each phase's weights apply from its start step on. Needs no feedback.

    A pure function of the step, so a resumed or replicated server serves the same phases.

    Args:
        phases: ``[[start_step, weights], …]`` with the first start 0 and starts increasing; weights as
            for ``static`` (a mapping, JSON text or ``a=0.5,b=0.5``). Also as JSON text.
    """

    def __init__(
        self, domains: list[str], *, token_counts: Mapping[str, int], phases: str | list | None = None
    ) -> None:
        super().__init__(domains, token_counts=token_counts)
        if isinstance(phases, str):
            try:
                phases = json.loads(phases)
            except json.JSONDecodeError as e:
                raise ValueError(f"schedule: `phases` is not valid JSON ({e.msg}): {phases!r}") from None
        if not isinstance(phases, list) or not phases:
            raise ValueError(
                'schedule: `phases` is required, e.g. [[0, {"web": 0.7, "code": 0.3}], [1000, "web=0.5,code=0.5"]]'
            )
        starts, mixes = [], []
        for i, p in enumerate(phases):
            if not isinstance(p, list | tuple) or len(p) != 2 or isinstance(p[0], bool) or not isinstance(p[0], int):
                raise ValueError(f"schedule: phases[{i}] must be [start_step, weights], got {p!r}")
            starts.append(p[0])
            mixes.append(normalize_weights(parse_weights(p[1]), self.domains, f"schedule: phases[{i}] weights"))
        if starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError(f"schedule: phase starts must begin at 0 and increase, got {starts}")
        self.starts, self.mixes = starts, mixes

    def phase(self, step: int) -> int:
        return max(i for i, s in enumerate(self.starts) if s <= step)

    def weights(self) -> dict[str, float]:
        return dict(self.mixes[0])

    def plan(self, step: int) -> Planned | None:
        i = self.phase(step)
        return Planned(dict(self.mixes[i]), f"schedule:phase{i}")
