"""Deterministic sampling and packing: every order and every draw is a hash of (seed, position).

No long-lived random generator exists here. A sequence's domain is a hash of (seed,
step, slot) mapped through the weights in force; a domain's document order in epoch
``e`` is a hash of (seed, domain, e); its packed sequence ``k`` is tokens
``[k·L, (k+1)·L)`` of the concatenation of its epochs. So a global batch is a pure
function of (seed, step, weights, per-domain cursors), and the cursors are a pure
function of the draws of earlier steps — which is what resume and replicas rely on.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from mixers.corpus import Corpus, SplitIndex

logger = logging.getLogger(__name__)

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
# salts keep the hash families of different decisions independent
SALT_DRAW, SALT_UNITS, SALT_DOCS = 0xD1, 0x5E, 0xD0


def _mix(x: int) -> int:
    """splitmix64's finaliser on a Python int."""
    x &= M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def key64(*parts: int) -> int:
    """A 64-bit key from integers (any sign, any size)."""
    h = 0
    for p in parts:
        h = _mix(h ^ _mix((p + GOLDEN) & M64))
    return h


def name_key(name: str) -> int:
    """A stable 64-bit key for a name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def hash_index(key: int, n: int) -> np.ndarray:
    """``n`` independent 64-bit hashes of (key, 0..n-1) as uint64."""
    x = np.arange(n, dtype=np.uint64) + np.uint64(GOLDEN)
    for _ in range(2):  # splitmix64 finaliser, twice: once on the index, once keyed
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        x ^= np.uint64(key)
    return x


def uniforms(key: int, n: int) -> np.ndarray:
    """``n`` floats in [0, 1) that depend only on (key, index)."""
    return (hash_index(key, n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permutation(key: int, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``key`` (stable across numpy versions)."""
    return np.argsort(hash_index(key, n), kind="stable")


def draw_domains(seed: int, step: int, n_slots: int, weights: np.ndarray) -> np.ndarray:
    """Domain ids (int16) of the ``n_slots`` sequences of global ``step``, drawn from ``weights``.

    Slot ``j``'s draw is a hash of (seed, step, j): no state carries from one step to the next.
    """
    w = np.asarray(weights, np.float64)
    cdf = np.cumsum(w)
    u = uniforms(key64(SALT_DRAW, seed, step), n_slots) * cdf[-1]
    ids = np.searchsorted(cdf, u, side="right")
    return np.minimum(ids, np.flatnonzero(w > 0)[-1]).astype(np.int16)


def exact_counts(weights: np.ndarray, n_slots: int) -> np.ndarray:
    """Sequences per domain when a mixture is served exactly: ``max(1, int(w·B))`` for each domain
    with ``w > 0`` (Aioli's probe batches), then rounded to fill ``B``: missing slots go to the
    largest fractional parts, surplus ones come off the largest counts (ties: lowest index)."""
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    live = w > 0
    if live.sum() > n_slots:
        raise ValueError(f"exact counts: {int(live.sum())} domains with weight > 0 do not fit {n_slots} sequences")
    ideal = w * n_slots
    counts = np.where(live, np.maximum(1, np.floor(ideal)), 0).astype(np.int64)
    deficit = n_slots - int(counts.sum())
    if deficit > 0:  # fewer slots missing than live domains: one pass over the largest fractional parts
        frac = np.where(live, ideal - np.floor(ideal), -1.0)
        counts[np.argsort(-frac, kind="stable")[:deficit]] += 1
    for _ in range(-deficit):  # the max(1, ·) floor overfilled the batch
        counts[int(np.argmax(counts))] -= 1
    return counts


def place_exact(seed: int, step: int, counts: np.ndarray) -> np.ndarray:
    """Domain ids (int16) of a step's slots holding exactly ``counts[k]`` sequences of domain ``k``,
    in an order hashed from (seed, step)."""
    ids = np.repeat(np.arange(len(counts), dtype=np.int16), counts)
    return ids[permutation(key64(SALT_DRAW, seed, step, 1), len(ids))]


@dataclass
class _Window:
    """A loaded window: decoded row groups (``chunks``) and, per document in serving order, which
    chunk (``src``) and where (``start``) its tokens are; ``cum`` holds cumulative lengths. Documents
    are gathered only when a sequence needs them, so loading costs one Parquet decode and no copy."""

    chunks: list[np.ndarray]
    src: list[int]
    start: list[int]
    cum: list[int]  # Python ints: the per-document loop below is faster on them than on numpy scalars

    @property
    def tokens(self) -> int:
        return self.cum[-1]

    def copy_into(self, out: np.ndarray, a: int) -> None:
        """Fill ``out`` with the window's tokens from position ``a`` on."""
        n, pos = len(out), 0
        cum, start, src, chunks = self.cum, self.start, self.src, self.chunks
        i = bisect.bisect_right(cum, a) - 1
        while pos < n:
            off = a + pos - cum[i]
            take = min(n - pos, cum[i + 1] - cum[i] - off)
            s = start[i] + off
            out[pos : pos + take] = chunks[src[i]][s : s + take]
            pos += take
            i += 1


class PackedStream:
    """One domain's infinite stream of training tokens, packed into sequences by position.

    Epoch ``e`` visits every train document of the domain once: its units (row groups)
    in an order hashed from (seed, domain, e), taken ``window`` units at a time, the
    documents of each window in an order hashed from (seed, domain, e, window). Epochs
    follow each other without a gap; documents keep their EOS, so a sequence that
    spans two documents has the EOS between them, and a long document continues into
    the next sequence (nothing is truncated or dropped). Token ``p`` of the stream is a
    pure function of (seed, domain, p); :meth:`read` seeks to any position.

    Memory: the per-document index plus two windows of tokens (the one being read and
    the next, loaded ahead on ``executor``): about 2 × ``window`` × (tokens per row group)
    × 4 bytes per domain. A larger window shuffles more widely and costs that much memory.

    Args:
        corpus: the run's shards.
        domain: which domain.
        seed: the mixer seed.
        window: units (row groups) shuffled together.
        executor: where read-ahead runs (None: no read-ahead).
    """

    def __init__(self, corpus: Corpus, domain: str, seed: int, window: int = 1, executor: Executor | None = None):
        if window < 1:
            raise ValueError(f"shuffle window must be >= 1 row group, got {window}")
        self.corpus = corpus
        self.domain = domain
        self.idx: SplitIndex = corpus.split(domain, "train")
        self.seed = seed
        self.dkey = name_key(domain)
        self.window = window
        self.executor = executor
        self._unit_tokens = self.idx.unit_tokens()
        self.epoch_tokens = int(self._unit_tokens.sum())
        self._layouts: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], _Window] = OrderedDict()
        self._pending: dict[tuple[int, int], Future] = {}
        self._lock = threading.Lock()

    def layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(unit order, window token offsets) of ``epoch``."""
        with self._lock:
            hit = self._layouts.get(epoch)
        if hit is not None:
            return hit
        order = permutation(key64(SALT_UNITS, self.seed, self.dkey, epoch), self.idx.n_units)
        per_window = np.add.reduceat(self._unit_tokens[order], np.arange(0, len(order), self.window))
        offsets = np.concatenate([[0], np.cumsum(per_window)]).astype(np.int64)
        with self._lock:
            self._layouts[epoch] = (order, offsets)
            while len(self._layouts) > 3:
                self._layouts.popitem(last=False)
        return order, offsets

    def n_windows(self) -> int:
        return -(-self.idx.n_units // self.window)

    def _load(self, epoch: int, w: int) -> _Window:
        order, _ = self.layout(epoch)
        units = order[w * self.window : (w + 1) * self.window]
        parts = [self.corpus.read_unit(self.idx, int(u)) for u in units]
        src = np.concatenate([np.full(len(p[1]), j, np.int64) for j, p in enumerate(parts)])
        starts = np.concatenate([p[1] for p in parts])
        lens = np.concatenate([p[2] for p in parts])
        perm = permutation(key64(SALT_DOCS, self.seed, self.dkey, epoch, w), len(lens))
        cum = np.concatenate([[0], np.cumsum(lens[perm])]).astype(np.int64)
        return _Window([p[0] for p in parts], src[perm].tolist(), starts[perm].tolist(), cum.tolist())

    def window_tokens(self, epoch: int, w: int) -> _Window:
        """Window ``w`` of ``epoch``: its documents in serving order, over the decoded row groups."""
        key = (epoch, w)
        with self._lock:
            hit = self._windows.get(key)
            fut = self._pending.get(key) if hit is None else None
        if hit is None:
            hit = fut.result() if fut is not None else self._load(epoch, w)
            with self._lock:
                self._pending.pop(key, None)
                self._windows[key] = hit
                while len(self._windows) > 1:
                    self._windows.popitem(last=False)
        self._read_ahead(epoch, w)
        return hit

    def _read_ahead(self, epoch: int, w: int) -> None:
        if self.executor is None:
            return
        nxt = (epoch, w + 1) if w + 1 < self.n_windows() else (epoch + 1, 0)
        with self._lock:
            if nxt in self._windows or nxt in self._pending:
                return
            with contextlib.suppress(RuntimeError):  # the executor was shut down
                self._pending[nxt] = self.executor.submit(self._load, *nxt)

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``[start, start + n)`` of the infinite stream (int32)."""
        if self.epoch_tokens == 0:
            raise ValueError(f"domain {self.domain!r} has no training tokens")
        out = np.empty(n, np.int32)
        done = 0
        while done < n:
            pos = start + done
            epoch, q = divmod(pos, self.epoch_tokens)
            _, offsets = self.layout(epoch)
            w = int(np.searchsorted(offsets, q, side="right")) - 1
            win = self.window_tokens(epoch, w)
            a = q - int(offsets[w])
            take = min(n - done, win.tokens - a)
            win.copy_into(out[done : done + take], a)
            done += take
        return out


@dataclass
class GlobalBatch:
    """The ``global_batch`` sequences of one step (rank ``r`` of ``W`` gets rows ``[r·B/W, (r+1)·B/W)``)."""

    step: int
    tokens: np.ndarray  # int32 [global_batch, seq_len]
    domains: np.ndarray  # int16 [global_batch], index into the sorted domain list
    cursors: np.ndarray  # int64 [n_domains], each domain's next sequence index after this step


def build_batch(
    streams: list[PackedStream],
    seed: int,
    step: int,
    global_batch: int,
    seq_len: int,
    weights: np.ndarray,
    cursors: np.ndarray,
    exact: bool = False,
) -> GlobalBatch:
    """Global step ``step``: draw each slot's domain (or, ``exact``, place exact per-domain counts),
    then fill the slots of each domain, in slot order, with that domain's next packed sequences
    starting at its cursor."""
    if exact:
        ids = place_exact(seed, step, exact_counts(weights, global_batch))
    else:
        ids = draw_domains(seed, step, global_batch, weights)
    out = np.empty((global_batch, seq_len), np.int32)
    nxt = np.array(cursors, np.int64, copy=True)
    for k, stream in enumerate(streams):
        rows = np.flatnonzero(ids == k)
        if len(rows):
            out[rows] = stream.read(int(nxt[k]) * seq_len, len(rows) * seq_len).reshape(len(rows), seq_len)
            nxt[k] += len(rows)
    return GlobalBatch(step, out, ids, nxt)


def pack_holdout(corpus: Corpus, domain: str, seq_len: int, max_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out documents of ``domain`` in shard order, packed: (tokens int32 [n, L], valid tokens per row).

    The last sequence is padded with 0 where the holdout runs out; ``n ≤ max_sequences``.
    """
    idx = corpus.split(domain, "holdout")
    want = max_sequences * seq_len
    chunks, have = [], 0
    for u in range(idx.n_units):
        if have >= want:
            break
        vals, starts, lens = corpus.read_unit(idx, u)
        for a, n in zip(starts.tolist(), lens.tolist()):
            chunks.append(vals[a : a + n])
            have += n
    flat = np.concatenate(chunks)[:want] if chunks else np.zeros(0, np.int32)
    n = -(-len(flat) // seq_len)
    out = np.zeros(n * seq_len, np.int32)
    out[: len(flat)] = flat
    valid = np.full(n, seq_len, np.int32)
    if n and len(flat) % seq_len:
        valid[-1] = len(flat) % seq_len
    return out.reshape(n, seq_len), valid
