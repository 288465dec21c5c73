"""The weight schedule and the mixer's versioned JSON state (what `checkpoint` returns and `--resume-from` reads)."""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATE_FORMAT = "sluice.mixer.state"
STATE_VERSION = 1


class Schedule:
    """The weights in force by step: entries ``{"step", "weights", "reason"[, "exact"]}``, steps non-decreasing.

    An entry applies from its step until the next entry's step. The first entry is at the
    step the run started (0) with reason ``init:<mixer>``; each change an algorithm makes
    adds one entry with reason ``<mixer>@<closed step>`` (or the reason of a planned
    mixture, e.g. ``aioli:probe``). ``exact: true`` marks weights served as exact
    per-batch counts rather than per-sequence draws.
    """

    def __init__(self, entries: list[Mapping[str, Any]]) -> None:
        if not entries:
            raise ValueError("a schedule needs at least one entry")
        self.entries: list[dict[str, Any]] = []
        self._steps: list[int] = []
        for e in entries:
            self.add(int(e["step"]), dict(e["weights"]), str(e.get("reason", "")), bool(e.get("exact", False)))

    def add(self, step: int, weights: dict[str, float], reason: str, exact: bool = False) -> None:
        if self._steps and step < self._steps[-1]:
            raise ValueError(f"schedule entries must not go back in time: step {step} after {self._steps[-1]}")
        entry = {"step": step, "weights": {d: float(w) for d, w in weights.items()}, "reason": reason}
        if exact:
            entry["exact"] = True
        self.entries.append(entry)
        self._steps.append(step)

    def entry(self, step: int) -> dict[str, Any]:
        """The entry in force at ``step``."""
        i = bisect.bisect_right(self._steps, step) - 1
        if i < 0:
            raise ValueError(f"no schedule entry at or before step {step}")
        return self.entries[i]

    def at(self, step: int) -> dict[str, float]:
        """The weights in force at ``step``."""
        return self.entry(step)["weights"]

    def exact_at(self, step: int) -> bool:
        """Whether the weights in force at ``step`` are served as exact per-batch counts."""
        return bool(self.entry(step).get("exact", False))

    def upto(self, step: int) -> list[dict[str, Any]]:
        """Entries at or before ``step`` (copies)."""
        return [dict(e, weights=dict(e["weights"])) for e in self.entries[: bisect.bisect_right(self._steps, step)]]

    def __len__(self) -> int:
        return len(self.entries)


def make_state(
    *,
    seed: int,
    step: int,
    domains: list[str],
    cursors: Mapping[str, int],
    schedule: list[dict[str, Any]],
    mixer: str,
    mixer_params: Mapping[str, Any],
    algorithm_state: Mapping[str, Any],
    closed_through: int,
    feedback: list[dict[str, Any]],
    config: Mapping[str, Any],
    epoch_tokens: Mapping[str, int],
    corpus: str,
    world: int | None,
) -> dict[str, Any]:
    """The state at the start of global step ``step``.

    Layout (version 1)::

        format, version      "sluice.mixer.state", 1
        seed                 the mixer seed
        step                 the next global step to serve
        domains              sorted domain names
        cursors              domain -> next packed-sequence index in that domain's stream
        schedule             [{step, weights, reason}] entries at or before ``step``
        mixer                {name, params, state}: the algorithm, its CLI params, its state_dict
        closed_through       last step whose feedback the algorithm has taken
        feedback             per-step feedback received for steps after closed_through
        config               seq_len, global_batch, shuffle_window, feedback_lag
        epoch_tokens         train tokens per domain
        corpus               digest of the train index (shards, row groups, rows, lengths); a
                             resume onto different shards is refused
        world                the trainer's world size, if known
    """
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "seed": seed,
        "step": step,
        "domains": list(domains),
        "cursors": {d: int(cursors[d]) for d in domains},
        "schedule": schedule,
        "mixer": {"name": mixer, "params": dict(mixer_params), "state": dict(algorithm_state)},
        "closed_through": closed_through,
        "feedback": feedback,
        "config": dict(config),
        "epoch_tokens": {d: int(epoch_tokens[d]) for d in domains},
        "corpus": corpus,
        "world": world,
    }


def check_state(state: Any) -> dict[str, Any]:
    """Validate a state dict's shape (not its fit to a corpus); return it. Raises ValueError naming the problem."""
    if isinstance(state, Mapping) and "server" in state and "next_step" in state:
        state = state["server"]  # a MixtureStream.state_dict() holds the server state under "server"
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"not a mixer state (expected format {STATE_FORMAT!r})")
    version = state.get("version")
    if not isinstance(version, int) or version > STATE_VERSION:
        raise ValueError(f"mixer state version {version!r} is not supported (this code reads <= {STATE_VERSION})")
    for key in ("seed", "step", "domains", "cursors", "schedule", "mixer", "config", "epoch_tokens"):
        if key not in state:
            raise ValueError(f"mixer state is missing {key!r}")
    if set(state["cursors"]) != set(state["domains"]):
        raise ValueError("mixer state: `cursors` must name exactly the state's domains")
    return dict(state)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state JSON file (the server state, or a MixtureStream.state_dict() holding one)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read mixer state {path}: {e}") from None
    return check_state(raw)
