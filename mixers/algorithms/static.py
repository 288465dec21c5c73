"""Mixers that never move: user weights (static), uniform (stratified), size^(1/T) (temperature)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mixers.algorithms.base import MixingAlgorithm, normalize_weights, register


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
