"""The weight schedule and the mixer's versioned JSON state (what `checkpoint` returns and `--resume-from` reads)."""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixers.algorithms.base import normalize_weights
from mixers.checks import int_range, is_int
from mixers.server.caps import check_caps
from mixers.server.feedback import FeedbackError, _per_domain

STATE_FORMAT = "sluice.mixer.state"
STATE_VERSION = 1
MAX_INT = 2**53  # the largest step or cursor a state may hold (JSON-safe)


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
        config               seq_len, global_batch, shuffle_window, feedback_lag; epoch_caps
                             {domain: epochs} and total_steps when set
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
    """Validate a state dict's shape and ranges (not its fit to a corpus); return it. Raises a one-line
    ValueError naming the bad field.

    Beyond types: ``step`` >= 0; cursors >= 0, 0 for a domain without train tokens, and together at most
    the ``step × global_batch`` sequences the steps before ``step`` hold; schedule entries at steps in
    ``[0, step]``, non-decreasing, with valid weights; ``world`` divides ``global_batch``.
    """
    if isinstance(state, Mapping) and "server" in state and "next_step" in state:
        state = state["server"]  # a MixtureStream.state_dict() holds the server state under "server"
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"not a mixer state (expected format {STATE_FORMAT!r})")
    version = state.get("version")
    if not is_int(version) or not 1 <= version <= STATE_VERSION:
        raise ValueError(f"mixer state version {version!r} is not supported (this code reads <= {STATE_VERSION})")
    for key in ("seed", "step", "domains", "cursors", "schedule", "mixer", "config", "epoch_tokens"):
        if key not in state:
            raise ValueError(f"mixer state is missing {key!r}")
    _int(state, "seed", "seed", -(2**64), 2**64)
    step = _int(state, "step", "step", 0)
    domains = state["domains"]
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains) or not domains:
        raise _bad("domains", "a non-empty list of names", domains)
    if len(set(domains)) != len(domains):
        raise _bad("domains", "a list of distinct names", domains)
    config = _obj(state["config"], "config")
    B = _int(config, "global_batch", "config.global_batch", 1)
    _int(config, "seq_len", "config.seq_len", 1)
    for key in ("shuffle_window", "feedback_lag"):
        if key in config:
            _int(config, key, f"config.{key}", 1)
    if config.get("total_steps") is not None:
        _int(config, "total_steps", "config.total_steps", 1)
    try:
        check_caps(config.get("epoch_caps"), domains, "config.epoch_caps")
    except ValueError as e:
        raise ValueError(f"mixer state: {e}") from None
    for key in ("cursors", "epoch_tokens"):
        if set(_obj(state[key], key)) != set(domains):
            raise ValueError(f"mixer state: `{key}` must name exactly the state's domains {domains}")
    for d in domains:
        cursor, tokens = (
            _int(state["cursors"], d, f"cursors[{d!r}]", 0),
            _int(state["epoch_tokens"], d, f"epoch_tokens[{d!r}]", 0),
        )
        if cursor and not tokens:
            raise _bad(f"cursors[{d!r}]", "0 (the domain has no train tokens)", cursor)
    total = sum(state["cursors"].values())
    if total > step * B:
        raise ValueError(
            f"mixer state: `cursors` add up to {total} sequences, more than the {step * B} of {step} steps of {B}"
        )
    entries = state["schedule"]
    if not isinstance(entries, list) or not entries:
        raise _bad("schedule", "a non-empty list of entries", entries)
    last = 0
    for i, e in enumerate(entries):
        where = f"schedule[{i}]"
        last = _int(_obj(e, where), "step", f"{where}.step", last, step)
        normalize_weights(_obj(e.get("weights"), f"{where}.weights"), domains, f"mixer state: `{where}.weights`")
        if not isinstance(e.get("reason", ""), str) or not isinstance(e.get("exact", False), bool):
            raise _bad(where, "{step, weights, reason: string, exact?: bool}", e)
    mixer = _obj(state["mixer"], "mixer")
    if not isinstance(mixer.get("name"), str) or not mixer["name"]:
        raise _bad("mixer.name", "a mixer name", mixer.get("name"))
    for key in ("params", "state"):
        if mixer.get(key) is not None:
            _obj(mixer[key], f"mixer.{key}")
    if state.get("closed_through") is not None:
        _int(state, "closed_through", "closed_through", -1, step - 1)
    _check_feedback(state.get("feedback") or [], domains, step)
    if state.get("world") is not None and B % _int(state, "world", "world", 1, B):
        raise _bad("world", f"a divisor of config.global_batch {B}", state["world"])
    if state.get("corpus") is not None and not isinstance(state["corpus"], str):
        raise _bad("corpus", "a digest string", state["corpus"])
    return dict(state)


def _check_feedback(entries: Any, domains: list[str], step: int) -> None:
    if not isinstance(entries, list):
        raise _bad("feedback", "a list", entries)
    for i, f in enumerate(entries):
        where = f"feedback[{i}]"
        _int(_obj(f, where), "step", f"{where}.step", 0, step)
        try:
            for r, rep in _obj(f.get("reports", {}), f"{where}.reports").items():
                if not (r.isascii() and r.isdigit()):
                    raise _bad(f"{where}.reports", "an object keyed by rank", r)
                rep = _obj(rep, f"{where}.reports[{r!r}]")
                _per_domain(rep, "loss_sum", domains, nonneg=True)
                _per_domain(rep, "tokens", domains, nonneg=True, integer=True)
                if rep.get("ref_loss_sum") is not None:
                    _per_domain(rep, "ref_loss_sum", domains, nonneg=True)
            for key, nonneg in (("eval_loss", True), ("alignment", False)):
                if f.get(key) is not None:
                    _per_domain(f, key, domains, nonneg=nonneg)
        except FeedbackError as e:
            raise ValueError(f"mixer state: `{where}`: {e}") from None


def _bad(field: str, want: str, got: Any) -> ValueError:
    r = repr(got)
    return ValueError(f"mixer state: `{field}` must be {want}, got {r if len(r) <= 80 else r[:77] + '...'}")


def _obj(v: Any, field: str) -> Mapping:
    if not isinstance(v, Mapping):
        raise _bad(field, "an object", v)
    return v


def _int(m: Mapping, key: str, field: str, lo: int, hi: int = MAX_INT) -> int:
    v = m.get(key)
    if not is_int(v) or not lo <= v <= hi:
        raise _bad(field, int_range(lo, None if hi == MAX_INT else hi), v)
    return v


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state JSON file (the server state, or a MixtureStream.state_dict() holding one)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: also bad JSON, bad UTF-8
        raise ValueError(
            f"cannot read mixer state {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return check_state(raw)
