"""Per-domain epoch caps: no domain is served more than ``E`` passes over its train tokens.

A cap of ``E`` epochs on domain ``d`` allows ``floor(E · train_tokens[d] / seq_len)`` packed
sequences of ``d`` (a domain's cursor counts the sequences served so far, so the cap is a
bound on the cursor). When a domain reaches its cap the server zeroes its weight and the
others are renormalised (a schedule entry with reason ``epoch_cap:<domain>``); within the step
that reaches the cap, the slots past it are drawn again from the remaining domains
(:func:`mixers.server.sampler.slot_domains`). Both depend only on (seed, step, weights,
cursors), so a resumed server or a replica makes the same cuts.

If every domain is capped, the caps bound the run: at most ``floor(Σ_d limit_d / global_batch)``
steps. :func:`check_budget` refuses a longer run before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mixers.checks import is_number

#: the limit of an uncapped domain
UNCAPPED = np.iinfo(np.int64).max


def check_caps(caps: Mapping[str, object] | None, domains: list[str], where: str = "epoch_caps") -> dict[str, float]:
    """``caps`` as {domain: epochs} after checking names (known domains) and values (finite, > 0)."""
    if not caps:
        return {}
    if not isinstance(caps, Mapping):
        raise ValueError(f"{where}: expected an object {{domain: epochs}}, got {caps!r}")
    unknown = sorted(set(caps) - set(domains))
    if unknown:
        raise ValueError(f"{where}: unknown domain(s) {unknown}; known domains: {domains}")
    out = {}
    for d, e in sorted(caps.items()):
        if not is_number(e) or e <= 0:
            raise ValueError(f"{where}[{d!r}]: an epoch cap must be a finite number > 0, got {e!r}")
        out[d] = float(e)
    return out


def parse_caps(pairs: list[str], where: str = "--epoch-cap") -> dict[str, float]:
    """``["code=2", "web=0.5"]`` (the CLI's repeated ``--epoch-cap DOMAIN=E``) as {domain: epochs}."""
    out: dict[str, float] = {}
    for pair in pairs:
        d, sep, e = pair.partition("=")
        try:
            value = float(e) if sep and d.strip() else None
        except ValueError:
            value = None
        if value is None:
            raise ValueError(f"{where}: expected DOMAIN=EPOCHS, got {pair!r}")
        out[d.strip()] = value
    return out


def limits(caps: Mapping[str, float], domains: list[str], train_tokens: Mapping[str, int], seq_len: int) -> np.ndarray:
    """Most sequences each domain may be served (int64, in ``domains`` order; :data:`UNCAPPED` if uncapped)."""
    return np.array(
        [math.floor(caps[d] * train_tokens[d] / seq_len) if d in caps else UNCAPPED for d in domains], np.int64
    )


def max_steps(
    caps: Mapping[str, float], domains: list[str], train_tokens: Mapping[str, int], seq_len: int, global_batch: int
) -> int | None:
    """The most steps the caps allow (every domain with train tokens capped), or None (no bound)."""
    live = [d for d in domains if train_tokens.get(d, 0) > 0]
    if not caps or not live or any(d not in caps for d in live):
        return None
    return int(limits(caps, live, train_tokens, seq_len).sum()) // global_batch


def check_budget(
    caps: Mapping[str, float],
    domains: list[str],
    train_tokens: Mapping[str, int],
    seq_len: int,
    global_batch: int,
    steps: int | None,
    where: str = "epoch_caps",
    steps_field: str = "total_steps",
) -> None:
    """Refuse ``steps`` steps of ``global_batch`` × ``seq_len`` tokens when the caps cannot serve that many.

    Raises ValueError naming ``where`` and ``steps_field``, with each domain's cap in sequences.
    """
    if steps is None:
        return
    most = max_steps(caps, domains, train_tokens, seq_len, global_batch)
    if most is not None and steps > most:
        lim = limits(caps, domains, train_tokens, seq_len)
        per = ", ".join(f"{d} {caps[d]:g} epochs = {int(n):,} sequences" for d, n in zip(domains, lim) if d in caps)
        raise ValueError(
            f"{where}: the caps allow at most {most:,} steps of {global_batch} sequences of {seq_len} tokens "
            f"({per}); {steps_field} is {steps:,}"
        )
