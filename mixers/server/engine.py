"""The mixer's core, independent of the transport: produce global batches ahead of the trainer and
serve them to ranks; close steps by feeding the algorithm, and snapshot the state per step.

:class:`MixerEngine` does the production (the producer thread, the cache of made batches, rebuilding
an evicted one), the serving (rank claims, the window of steps it can serve) and all the waiting;
the bookkeeping — the algorithm, the schedule, feedback per step, states, token counters — is its
:class:`~mixers.server.ledger.Ledger` and :class:`~mixers.server.ledger.TokenMeter`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixers.algorithms.base import REPORT, REPORT_ALIGNMENT, REPORT_EVAL, MixingAlgorithm
from mixers.checks import check_int, is_int
from mixers.server.caps import check_budget
from mixers.server.corpus import HOLDOUT, TRAIN, Corpus
from mixers.server.feedback import FeedbackError, parse_alignment, parse_eval, parse_report
from mixers.server.ledger import Ledger, Snapshot, TokenMeter
from mixers.server.sampler import GlobalBatch, PackedStream, build_batch, pack_holdout
from mixers.server.state import Schedule, check_state

logger = logging.getLogger(__name__)

#: steps of snapshots and feedback kept: checkpoints and feedback must be within this window
RETAIN = 4096
#: seconds a train request for a rank that has an open stream waits for that stream to end before it is refused
CLAIM_WAIT = 2.0
#: seconds a `report` of a step not produced yet waits for it (a trainer re-sending its reports to a
#: server resumed from an older state is ahead of it)
REPORT_WAIT = 30.0


class MixerFailed(RuntimeError):
    """The producer stopped on an error (a mixing-algorithm bug, unreadable shards)."""


class RequestError(ValueError):
    """A request the engine refuses; the message says why. The engine keeps serving."""


@dataclass(frozen=True)
class MixerConfig:
    """Settings that fix what is served (recorded in the state).

    Args:
        seq_len: tokens per packed sequence.
        global_batch: sequences per global step, split evenly across ranks.
        seed: seeds every hash-based draw and shuffle.
        mixer: registered algorithm name.
        mixer_params: keyword arguments for the algorithm (e.g. ``weights``, ``temperature``).
        shuffle_window: row groups whose documents are shuffled together (memory per domain
            ≈ 2–3 × shuffle_window × tokens per row group × 4 bytes).
        feedback_lag: feedback for step s can move the weights from step s + lag on; the
            producer runs at most ``lag`` steps ahead of the feedback an algorithm waits for.
        prefetch: global steps produced ahead of the furthest step a rank asked for.
        epoch_caps: domain -> the most epochs of its train tokens served (:mod:`mixers.server.caps`);
            a domain at its cap gets weight 0 and the others are renormalised.
        total_steps: the run's length in steps, if known: algorithms that plan by it (Aioli's probe
            budget) get it, and epoch caps that cannot serve it are refused at start.
    """

    seq_len: int = 2048
    global_batch: int = 64
    seed: int = 0
    mixer: str = "stratified"
    mixer_params: dict[str, Any] = field(default_factory=dict)
    shuffle_window: int = 1
    feedback_lag: int = 4
    prefetch: int = 8
    epoch_caps: dict[str, float] = field(default_factory=dict)
    total_steps: int | None = None

    def __post_init__(self) -> None:
        for name, lo in (("seq_len", 1), ("global_batch", 1), ("shuffle_window", 1), ("feedback_lag", 1)):
            check_int(getattr(self, name), name, lo)
        check_int(self.prefetch, "prefetch", 0)
        if self.total_steps is not None:
            check_int(self.total_steps, "total_steps", 1)

    def __str__(self) -> str:
        return f"{self.mixer}_L{self.seq_len}_B{self.global_batch}_seed{self.seed}_win{self.shuffle_window}"

    def recorded(self) -> dict[str, Any]:
        keys = ("seq_len", "global_batch", "shuffle_window", "feedback_lag")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        if self.epoch_caps:
            out["epoch_caps"] = dict(self.epoch_caps)
        if self.total_steps is not None:
            out["total_steps"] = self.total_steps
        return out


class MixerEngine:
    """Produces global batches in step order on a background thread and answers requests.

    Producing step ``t`` first *closes* step ``t - feedback_lag`` (see
    :class:`mixers.algorithms.base.MixingAlgorithm`), then snapshots the state at ``t`` (cursors,
    algorithm state), then builds the batch from (seed, t, weights at t, cursors). Batches
    are cached until every rank has fetched its slice; an evicted one is rebuilt from its
    snapshot (same bytes: it is a pure function of the snapshot).

    Args:
        out: run directory with tokenized shards.
        config: what to serve.
        state: a state from :meth:`checkpoint` to resume from (its config wins).
        readers: threads that read row groups ahead.
    """

    def __init__(self, out: str, config: MixerConfig, state: dict[str, Any] | None = None, readers: int = 4) -> None:
        self.corpus = Corpus(out)
        self.domains = self.corpus.domains
        self.train_tokens = self.corpus.tokens(TRAIN)
        self.corpus_digest = self.corpus.fingerprint()
        if state is not None:
            state = check_state(state)
            config = self._config_from_state(config, state)
        self.config = config
        self.ledger = Ledger(self.domains, self.train_tokens, config, state)
        if state is None:  # a resumed run was checked when it started
            check_budget(
                self.ledger.caps, self.domains, self.train_tokens, config.seq_len, config.global_batch,
                config.total_steps,
            )  # fmt: skip
            self.base = 0
            cursors = np.zeros(len(self.domains), np.int64)
        else:
            self.base = int(state["step"])
            cursors = np.array([int(state["cursors"][d]) for d in self.domains], np.int64)
        self._executor = ThreadPoolExecutor(max(1, readers), thread_name_prefix="mixer-read")
        self.streams = [
            PackedStream(self.corpus, d, config.seed, config.shuffle_window, self._executor) for d in self.domains
        ]
        # one lock, two conditions: the producer (and checkpoints) wait on `_cv` for demand and
        # feedback; Flight threads wait on `_ready` for produced steps, so a rank asking for a batch
        # wakes the producer only, not every other rank's thread
        lock = threading.RLock()
        self._cv = threading.Condition(lock)
        self._ready = threading.Condition(lock)
        self._gen_lock = threading.Lock()
        self._next = self.base
        self._cursors = cursors
        self._want = self.base + max(config.prefetch, 1) - 1  # furthest step asked for + prefetch
        self._want_explicit = self.base - 1  # furthest step a checkpoint or a `report` asked for
        self._batches: OrderedDict[int, GlobalBatch] = OrderedDict()
        self._fetched: dict[int, set[int]] = {}
        self._snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        self._stop = threading.Event()
        self.failed: str | None = None
        self._waiting_since: float | None = None
        self._idle = False  # the producer waits for demand (see `_wake_producer`)
        # serving statistics
        self._ranks: dict[int, dict[str, Any]] = {}
        self._claims = 0  # train streams accepted so far (a claim's id)
        self._meter = TokenMeter(self.domains)
        self._holdout_cache: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self.started = time.time()
        self.instance = uuid.uuid4().hex
        self._producer = threading.Thread(target=self._produce_loop, name="mixer-producer", daemon=True)

    @property
    def algorithm(self) -> MixingAlgorithm:
        return self.ledger.algorithm

    @property
    def schedule(self) -> Schedule:
        return self.ledger.schedule

    # ------------------------------------------------------------------ set-up
    def _config_from_state(self, config: MixerConfig, state: dict[str, Any]) -> MixerConfig:
        if state["domains"] != self.domains:
            raise ValueError(f"resume: the state's domains {state['domains']} differ from the run's {self.domains}")
        epoch = {d: int(self.train_tokens[d]) for d in self.domains}
        if state["epoch_tokens"] != epoch:
            raise ValueError(
                f"resume: the shards changed since the state was taken (train tokens {state['epoch_tokens']} "
                f"then, {epoch} now); batches would differ"
            )
        digest = state.get("corpus")  # absent in hand-made states: then the token counts must do
        if digest is not None and digest != self.corpus_digest:
            raise ValueError(
                "resume: the shards changed since the state was taken (same token counts, different "
                "files, row groups or documents); batches would differ"
            )
        rec = state["config"]
        mixer = state["mixer"]
        return MixerConfig(
            seq_len=int(rec["seq_len"]),
            global_batch=int(rec["global_batch"]),
            seed=int(state["seed"]),
            mixer=str(mixer["name"]),
            mixer_params=dict(mixer.get("params", {})),
            shuffle_window=int(rec.get("shuffle_window", config.shuffle_window)),
            feedback_lag=int(rec.get("feedback_lag", config.feedback_lag)),
            prefetch=config.prefetch,
            epoch_caps=dict(rec.get("epoch_caps", {})),
            total_steps=rec.get("total_steps"),
        )

    def start(self) -> MixerEngine:
        self._producer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
            self._ready.notify_all()
        if self._producer.is_alive():
            self._producer.join(timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ production
    def due(self, step: int) -> list[str]:
        """Measurements the trainer owes after training on ``step`` (``report_eval``, ``report_alignment``);
        sent with the step's batch. ``report`` is not listed: a trainer sends it every step."""
        return self.ledger.due(step)

    def _build(self, step: int, cursors: np.ndarray) -> GlobalBatch:
        """The batch of ``step`` from the cursors at its start: a pure function of them and the weights at
        ``step``, so a rebuilt batch has the same bytes."""
        weights, exact = self.ledger.weights_at(step)
        with self._gen_lock:
            return build_batch(
                self.streams, self.config.seed, step, self.config.global_batch, self.config.seq_len,
                weights, cursors, exact, self.ledger.limits,
            )  # fmt: skip

    def _produce_loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._cv:
                    while not self._stop.is_set() and self._next > self._horizon():
                        self._idle = True
                        self._cv.wait(0.5)
                    self._idle = False
                    if self._stop.is_set():
                        return
                    t = self._next
                    self.ledger.apply_caps(t, self._cursors)
                    if not self._close(t - self.config.feedback_lag):
                        return
                    self.ledger.apply_plan(t)
                    snap = self.ledger.snapshot(self._cursors)
                batch = self._build(t, snap.cursors)  # outside `_cv`: this thread alone adds to the schedule
                with self._cv:
                    self._snapshots[t] = snap
                    self._batches[t] = batch
                    self._cursors = batch.cursors
                    self._next = t + 1
                    while len(self._snapshots) > RETAIN:
                        self._snapshots.popitem(last=False)
                    self.ledger.forget_before(t - RETAIN)
                    while len(self._batches) > 4 * self.config.prefetch + 16:
                        old, _ = self._batches.popitem(last=False)
                        self._fetched.pop(old, None)
                    self._cv.notify_all()
                    self._ready.notify_all()
        except Exception as e:  # an algorithm bug or unreadable data: fail loudly, keep answering
            logger.exception("mixer producer failed")
            with self._cv:
                self.failed = f"{type(e).__name__}: {e}"
                self._cv.notify_all()
                self._ready.notify_all()

    def _wake_producer(self) -> None:
        """Wake the producer if it waits for demand and now has a step to make (holds ``_cv``). Ranks call
        this on every batch; waking it only when there is work spares a thread switch per batch."""
        if self._idle and self._next <= self._horizon():
            self._cv.notify_all()

    def _horizon(self) -> int:
        """The last step to produce now: ``prefetch`` past the slowest rank with an open stream (ranks of a
        data-parallel job move in lockstep, so running further ahead for a fast rank only costs memory),
        or past what was asked for explicitly when no rank streams. Holds ``_cv``."""
        nexts = [r["next_step"] for r in self._ranks.values() if r.get("streams", 0) > 0 and "next_step" in r]
        lockstep = min(nexts) + self.config.prefetch if nexts else self._want
        return max(lockstep, self._want_explicit)

    def _close(self, c: int) -> bool:
        """Give the algorithm the feedback of step ``c``, waiting for what it needs; False if stopped
        meanwhile. Holds ``_cv``."""
        needs = self.ledger.to_close(c)
        if needs is None:
            return True
        while needs and not self.ledger.has(c, needs):
            if self._stop.is_set():
                return False
            if self._waiting_since is None:
                self._waiting_since = time.time()
            self._cv.wait(0.5)
        self._waiting_since = None
        self.ledger.close(c, needs)
        return True

    def _wait_produced(self, step: int, timeout: float, poll: float | None = None) -> bool:
        """Wait up to ``timeout`` s (waking at least every ``poll`` s) for ``step`` to be produced; False if
        it was not by then or the engine stopped. Raises :class:`MixerFailed` if the producer failed. Holds
        ``_cv``."""
        deadline = time.monotonic() + timeout
        while step >= self._next:
            if self.failed:
                raise MixerFailed(self.failed)
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return False
            self._ready.wait(left if poll is None else min(left, poll))
        return True

    def awaiting(self) -> dict[str, Any] | None:
        """What the producer waits for, if it waits for feedback."""
        with self._cv:
            if self._waiting_since is None:
                return None
            c = self._next - self.config.feedback_lag
            return {"step": c, **self.ledger.missing(c), "seconds": round(time.time() - self._waiting_since, 1)}

    # ------------------------------------------------------------------ serving
    def check_train(self, rank: int, world: int, step: int) -> None:
        """Check a train request's rank, world and step against the server's; changes nothing."""
        if world < 1 or self.config.global_batch % world:
            raise RequestError(f"world {world} must be >= 1 and divide global_batch {self.config.global_batch}")
        if not 0 <= rank < world:
            raise RequestError(f"rank {rank} must be in [0, {world})")
        with self._cv:
            if self.ledger.world is not None and world != self.ledger.world:
                raise RequestError(
                    f"world {world} differs from this server's world {self.ledger.world}; "
                    "every rank of a job uses the same world size (restart the server to change it)"
                )
            self.check_step(step)

    def open_stream(self, rank: int, world: int, step: int, wait: float = CLAIM_WAIT) -> int:
        """Check a train request (:meth:`check_train`) and claim ``rank`` for its stream; return the claim
        for :meth:`stream_closed`. A rank has one stream at a time: if another holds it, wait up to ``wait``
        s for that one to end (a client that reconnects may be faster than the server noticing its old
        stream is gone), then refuse. Only an accepted request fixes the world size."""
        self.check_train(rank, world, step)
        deadline = time.monotonic() + wait
        with self._cv:
            while (r := self._ranks.get(rank, {})).get("claim") is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestError(
                        f"rank {rank} already has an open train stream (at step {r.get('next_step', '?')}); "
                        f"a rank may have one stream at a time: does another trainer use rank {rank}?"
                    )
                self._cv.wait(min(left, 0.05))
            self.check_train(rank, world, step)  # again: the world or the window may have moved meanwhile
            if self.ledger.world is None:
                self.ledger.world = world
            self._claims += 1
            r = self._ranks.setdefault(rank, {"streams": 0})
            r.update(claim=self._claims, streams=1, last_seen=time.time())
            return self._claims

    def check_step(self, step: int) -> None:
        with self._cv:
            oldest = next(iter(self._snapshots), self._next)
            lo = min(oldest, self._next)
            if step < max(lo, self.base):
                raise RequestError(
                    f"step {step} is before this server's window (first step it can serve: {max(lo, self.base)}); "
                    "restart the server with --resume-from a state taken at or before that step"
                )
            if step > self._next + RETAIN:
                raise RequestError(f"step {step} is too far ahead of the server (next step: {self._next})")

    def batch(self, step: int, rank: int, timeout: float = 0.5) -> GlobalBatch | None:
        """The global batch of ``step``, waiting up to ``timeout`` s for it (None if not ready yet)."""
        with self._cv:
            self._ranks.setdefault(rank, {"streams": 0})
            self._ranks[rank].update(next_step=step, last_seen=time.time())
            if step + self.config.prefetch > self._want:
                self._want = step + self.config.prefetch
            self._wake_producer()
            if not self._wait_produced(step, timeout):
                return None
            b = self._batches.get(step)
            snap = self._snapshots.get(step) if b is None else None
            if b is None and snap is None:
                raise RequestError(f"step {step} is no longer available on this server")
            if b is not None:
                done = self._fetched.setdefault(step, set())
                done.add(rank)
                if self.ledger.world is not None and len(done) >= self.ledger.world:
                    self._batches.pop(step, None)
                    self._fetched.pop(step, None)
        if b is None:  # evicted: rebuild from the snapshot
            b = self._build(step, snap.cursors)
        return b

    def served(self, rank: int, step: int, domains: np.ndarray) -> None:
        """Count a rank's delivered slice of ``step`` (per-domain token rates in `status`)."""
        counts = np.bincount(domains, minlength=len(self.domains)) * self.config.seq_len
        with self._cv:
            self._meter.add(counts)
            self._ranks.setdefault(rank, {"streams": 0})["next_step"] = step + 1
            self._wake_producer()

    def stream_closed(self, rank: int, claim: int) -> None:
        """Release ``rank``'s claim from :meth:`open_stream` (once its stream has ended or sent its last step)."""
        with self._cv:
            r = self._ranks[rank]
            if r.get("claim") == claim:
                r.update(claim=None, streams=0)
                self._wake_producer()

    # ------------------------------------------------------------------ feedback
    def feedback(self, kind: str, body: Any) -> dict[str, Any]:
        """Validate and record one feedback request; raise :class:`FeedbackError` if refused."""
        if kind == REPORT:
            step, rank, world, loss, tokens, ref = parse_report(body, self.domains)
        elif kind == REPORT_EVAL:
            step, values = parse_eval(body, self.domains)
        elif kind == REPORT_ALIGNMENT:
            step, values = parse_alignment(body, self.domains)
        else:
            raise FeedbackError(f"unknown feedback kind {kind!r}")
        with self._cv:
            # the window: steps the server still keeps, up to RETAIN ahead (a trainer that reconnects
            # to a server resumed from an older state re-sends reports for steps it has not produced yet)
            lo, hi = max(0, self._next - RETAIN), self._next + RETAIN
            if not lo <= step < hi:
                raise FeedbackError(f"{kind}: step {step} is outside the feedback window [{lo}, {hi})")
            if kind == REPORT:
                self._check_report(step, rank, world, tokens)
                self.ledger.add_report(step, rank, world, loss, tokens, ref)
            else:
                self.ledger.add_measurement(kind, step, values)
            self._cv.notify_all()
            return {"ok": True, "step": step, "closed_through": self.ledger.closed}

    def _check_report(self, step: int, rank: int, world: int, tokens: dict[str, int]) -> None:
        """Refuse a `report` whose world is not the server's or that claims more tokens of a domain than
        ``rank``'s slice of ``step`` holds (fewer is fine: a trainer may mask positions). A step not
        produced yet is waited for, up to REPORT_WAIT s. Holds ``_cv``."""
        self.ledger.check_world(world)
        if step >= self._next:
            self._want_explicit = max(self._want_explicit, step)
            self._cv.notify_all()
            if not self._wait_produced(step, REPORT_WAIT, poll=0.5):
                raise FeedbackError(f"{REPORT}: step {step} has not been produced (next step: {self._next})")
            self.ledger.check_world(world)
        snap = self._snapshots.get(step)
        self.ledger.check_tokens(step, rank, world, tokens, None if snap is None else snap.cursors)

    # ------------------------------------------------------------------ state
    def checkpoint(self, step: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The state at the start of ``step`` (default: the lowest step a connected rank will ask for next).

        Waits up to ``timeout`` s for the producer to reach ``step`` and for ranks that
        have begun reporting a step before it to finish (a partial `report` would not
        be complete in the resumed server).
        """
        deadline = time.monotonic() + timeout
        with self._cv:
            if step is None:
                nexts = [r["next_step"] for r in self._ranks.values() if "next_step" in r]
                step = min(nexts) if nexts else self._next
            if not is_int(step):
                raise RequestError(f"checkpoint: `step` must be an integer, got {step!r}")
            if step < self._next:
                self.check_step(step)
            if step > self._next + self.config.prefetch + 1:
                raise RequestError(f"checkpoint: step {step} is ahead of the served steps (next: {self._next})")
            self._want_explicit = max(self._want_explicit, step)
            self._cv.notify_all()

            def produced() -> bool:
                return step < self._next or step == self.base == self._next

            waits_for_reports = REPORT in self.ledger.algorithm.feedback_kinds

            def ready() -> bool:
                if not produced():
                    return False
                return not waits_for_reports or self.ledger.reports_complete(step - self.config.feedback_lag, step)

            while not ready():
                if self.failed:
                    raise MixerFailed(self.failed)
                left = deadline - time.monotonic()
                if left <= 0:
                    if not produced():
                        raise RequestError(f"checkpoint: step {step} was not produced within {timeout:.0f} s")
                    logger.warning("checkpoint at %d: some ranks have not reported the last steps", step)
                    break
                self._cv.wait(min(left, 0.5))
            snap = self._snapshots.get(step)
            if snap is None:  # a resumed server before its first step: the loaded state
                snap = self.ledger.snapshot(self._cursors)
            return self.ledger.state(step, snap, self.corpus_digest)

    # ------------------------------------------------------------------ info, status, eval
    def info(self) -> dict[str, Any]:
        return {
            "domains": self.domains,
            "seq_len": self.config.seq_len,
            "global_batch": self.config.global_batch,
            "seed": self.config.seed,
            "mixer": self.config.mixer,
            "feedback_lag": self.config.feedback_lag,
            "world": self.ledger.world,
            "first_step": self.base,
            "train_tokens": self.train_tokens,
            "holdout_tokens": self.corpus.tokens(HOLDOUT),
            "token_type": self.corpus.token_type.name,
            "started": self.started,
            "instance": self.instance,
        }

    def sample_rates(self) -> None:
        """Record the served-token counters (the monitor calls this about once a second)."""
        with self._cv:
            self._meter.sample()

    def rates(self, window: float = 10.0) -> dict[str, float]:
        with self._cv:
            return self._meter.rates(window)

    def status(self, at: int | None = None) -> dict[str, Any]:
        """Serving status. ``step`` is the lowest next step among ranks with an open stream (what has
        been sent; a few batches may still be in flight or in the client's prefetch queue), ``weights``
        the weights in force there — or at step ``at`` when given (a trainer logging the weights of the
        batches it trained on, not of those prefetched) — ``tokens_per_s`` per domain over the last 10 s."""
        rates = self.rates()
        with self._cv:
            ranks = {r: v for r, v in self._ranks.items() if v.get("streams", 0) > 0}
            trainer_step = min((v.get("next_step", self._next) for v in ranks.values()), default=self._next)
            ledger = self.ledger
            out = {
                "step": trainer_step,
                "produced_through": self._next - 1,
                "closed_through": ledger.closed,
                "weights": ledger.schedule.at(max(trainer_step if at is None else at, 0)),
                "tokens_per_s": rates,
                "tokens_served": dict(zip(self.domains, self._meter.served.tolist())),
                "connected_ranks": sorted(ranks),
                "world": ledger.world,
                "schedule_entries": len(ledger.schedule),
                "train_loss": dict(ledger.last_loss),
                "eval_loss": dict(ledger.last_eval),
                "uptime_s": round(time.time() - self.started, 1),
                "failed": self.failed,
            }
        out["awaiting"] = self.awaiting()
        return out

    def holdout(self, domain: str, max_sequences: int) -> tuple[np.ndarray, np.ndarray]:
        """Packed held-out sequences of ``domain`` (tokens [n, L], valid tokens per row)."""
        if domain not in self.domains:
            raise RequestError(f"unknown domain {domain!r}; known domains: {self.domains}")
        if not self.corpus.has_split:
            raise RequestError("the shards have no `split` column; add `{op: split}` to the recipe for held-out data")
        if self.corpus.split(domain, HOLDOUT).tokens == 0:
            raise RequestError(f"domain {domain!r} has no held-out documents")
        hit = self._holdout_cache.get(domain)
        if hit is None or hit[0] < max_sequences:
            toks, valid = pack_holdout(self.corpus, domain, self.config.seq_len, max_sequences)
            hit = (max_sequences, toks, valid)
            self._holdout_cache[domain] = hit
        return hit[1][:max_sequences], hit[2][:max_sequences]
