"""Deterministic sampling and packing: every order and every draw is a hash of (seed, position)
(:mod:`mixers.hashing`).

No long-lived random generator exists here. A sequence's domain is a hash of (seed,
step, slot) mapped through the weights in force; a domain's document order in epoch
``e`` is a hash of (seed, domain, e); its packed sequence ``k`` is tokens
``[k·L, (k+1)·L)`` of the concatenation of its epochs. So a global batch is a pure
function of (seed, step, weights, per-domain cursors), and the cursors are a pure
function of the draws of earlier steps — which is what resume and replicas rely on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mixers.hashing import SALT_CAP, SALT_DOCS, SALT_DRAW, SALT_UNITS, key64, name_key, permutation, uniforms
from mixers.server.corpus import Corpus, SplitIndex

logger = logging.getLogger(__name__)


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


def slot_domains(
    seed: int, step: int, global_batch: int, weights: np.ndarray, exact: bool = False, room: np.ndarray | None = None
) -> np.ndarray:
    """Domain ids (int16) of the ``global_batch`` slots of ``step``: drawn from ``weights``, or (``exact``)
    exactly the per-domain counts of :func:`exact_counts` placed by hash.

    ``room`` (epoch caps, :mod:`mixers.server.caps`): the most sequences each domain may still be
    served. A domain drawn more often keeps its first ``room`` slots; the others are drawn again,
    hashed from (seed, step, round), from the weights of the domains that still have room.
    Depends on nothing else. Raises ValueError if no domain with weight > 0 has room left.
    """
    if exact:
        ids = place_exact(seed, step, exact_counts(weights, global_batch))
    else:
        ids = draw_domains(seed, step, global_batch, weights)
    if room is None:
        return ids
    w = np.array(weights, np.float64, copy=True)
    room = np.asarray(room, np.int64)
    for round_ in range(len(w) + 1):
        counts = np.bincount(ids, minlength=len(w))
        over = counts > room
        w[counts >= room] = 0.0  # full after this step: no more draws
        if not over.any():
            return ids
        free = np.sort(np.concatenate([np.flatnonzero(ids == d)[max(int(room[d]), 0) :] for d in np.flatnonzero(over)]))
        if w.sum() <= 0:
            raise ValueError(f"step {step}: every domain with weight > 0 has reached its epoch cap")
        ids[free] = draw_domains(key64(SALT_CAP, seed, step), round_, len(free), w)
    raise AssertionError("unreachable: each round fills at least one more domain")  # pragma: no cover


class PackedStream:
    """One domain's infinite stream of training tokens, packed into sequences by position.

    Epoch ``e`` visits every train document of the domain once: its units (row groups)
    in an order hashed from (seed, domain, e), taken ``window`` units at a time, the
    documents of each window in an order hashed from (seed, domain, e, window). Epochs
    follow each other without a gap; documents keep their EOS, so a sequence that
    spans two documents has the EOS between them, and a long document continues into
    the next sequence (nothing is truncated or dropped). Token ``p`` of the stream is a
    pure function of (seed, domain, p); :meth:`read` seeks to any position.

    Memory: the per-document index plus two windows of tokens in serving order (the one
    being read and the next, loaded ahead on ``executor``; while loading, the decoded row
    groups are held too, until the window's copy is laid out): about 2–3 × ``window`` ×
    (tokens per row group) × 4 bytes per domain. A larger window shuffles more widely and
    costs that much memory.

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
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
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

    def _load(self, epoch: int, w: int) -> np.ndarray:
        order, _ = self.layout(epoch)
        units = [int(u) for u in order[w * self.window : (w + 1) * self.window]]
        n_docs = sum(int(self.idx.unit_start[u + 1] - self.idx.unit_start[u]) for u in units)
        perm = permutation(key64(SALT_DOCS, self.seed, self.dkey, epoch, w), n_docs)
        return self.corpus.gather(self.idx, units, perm)

    def window_tokens(self, epoch: int, w: int) -> np.ndarray:
        """Window ``w`` of ``epoch``: its documents' tokens in serving order (the corpus's ``token_type``)."""
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
        """Tokens ``[start, start + n)`` of the infinite stream (the corpus's ``token_type``)."""
        out = np.empty(n, self.corpus.token_type)
        self.read_into(out, start)
        return out

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` with tokens ``[start, start + len(out))`` of the infinite stream."""
        done = 0
        for src in self._pieces(start, len(out)):
            out[done : done + len(src)] = src
            done += len(src)

    def read_rows(self, out: np.ndarray, rows: np.ndarray, start: int) -> None:
        """Fill rows ``rows`` of ``out`` [B, L] (ascending indices) with the stream's next ``len(rows)``
        sequences from token ``start``: ``out[rows[j]]`` gets tokens ``[start + j·L, start + (j+1)·L)``.

        Copies straight from the windows into the rows (whole rows of a window piece in one
        numpy assignment), without a temporary of the domain's tokens.
        """
        L, done = out.shape[1], 0
        for src in self._pieces(start, len(rows) * L):
            j, off = divmod(done, L)
            done += len(src)
            if off:  # finish the row the previous piece began
                k = min(L - off, len(src))
                out[rows[j], off : off + k] = src[:k]
                src, j = src[k:], j + 1
            full = len(src) // L
            if full:
                out[rows[j : j + full]] = src[: full * L].reshape(full, L)
            if len(src) > full * L:  # begin a row the next piece finishes
                out[rows[j + full], : len(src) - full * L] = src[full * L :]

    def _pieces(self, start: int, n: int) -> Iterator[np.ndarray]:
        """Tokens ``[start, start + n)`` of the stream as views of consecutive windows."""
        if self.epoch_tokens == 0:
            raise ValueError(f"domain {self.domain!r} has no training tokens")
        done = 0
        while done < n:
            epoch, q = divmod(start + done, self.epoch_tokens)
            _, offsets = self.layout(epoch)
            w = int(np.searchsorted(offsets, q, side="right")) - 1
            win = self.window_tokens(epoch, w)
            a = q - int(offsets[w])
            take = min(n - done, len(win) - a)
            yield win[a : a + take]
            done += take


@dataclass
class GlobalBatch:
    """The ``global_batch`` sequences of one step (rank ``r`` of ``W`` gets rows ``[r·B/W, (r+1)·B/W)``).

    ``tokens`` and ``domains`` are numpy views of Arrow-allocated buffers, so :meth:`rows` hands a
    rank's slice to Flight without a copy and without a Python object that the sending gRPC
    thread would have to take the GIL to release.
    """

    step: int
    tokens: np.ndarray  # token_type (uint16 or int32) [global_batch, seq_len]
    domains: np.ndarray  # int16 [global_batch], index into the sorted domain list
    cursors: np.ndarray  # int64 [n_domains], each domain's next sequence index after this step
    token_buffer: pa.Buffer  # the memory behind ``tokens``
    domain_buffer: pa.Buffer  # the memory behind ``domains``

    def rows(self, lo: int, hi: int, widen: bool = False) -> tuple[pa.FixedSizeListArray, pa.Array]:
        """Rows ``[lo, hi)`` as Arrow arrays: ``input_ids`` fixed_size_list<token type>[seq_len] (a view of
        the batch; ``widen``: a copy as int32), ``domain`` int16."""
        L, n, size = self.tokens.shape[1], hi - lo, self.tokens.itemsize
        vtype = pa.from_numpy_dtype(self.tokens.dtype)
        values = pa.Array.from_buffers(vtype, n * L, [None, self.token_buffer.slice(lo * L * size, n * L * size)])
        if widen and vtype != pa.int32():
            values = values.cast(pa.int32())
        domains = pa.Array.from_buffers(pa.int16(), n, [None, self.domain_buffer.slice(lo * 2, n * 2)])
        return pa.FixedSizeListArray.from_arrays(values, L), domains


def _arrow_backed(shape: tuple[int, ...], dtype: np.dtype | type) -> tuple[np.ndarray, pa.Buffer]:
    """A writable numpy array over a fresh Arrow buffer."""
    buf = pa.allocate_buffer(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(buf, dtype).reshape(shape), buf


def build_batch(
    streams: list[PackedStream],
    seed: int,
    step: int,
    global_batch: int,
    seq_len: int,
    weights: np.ndarray,
    cursors: np.ndarray,
    exact: bool = False,
    limits: np.ndarray | None = None,
) -> GlobalBatch:
    """Global step ``step``: draw each slot's domain (or, ``exact``, place exact per-domain counts),
    then fill the slots of each domain, in slot order, with that domain's next packed sequences
    starting at its cursor. ``limits``: the most sequences each domain may be served in the whole
    run (epoch caps); the step's draws respect ``limits - cursors``."""
    room = None if limits is None else np.maximum(limits - np.asarray(cursors, np.int64), 0)
    drawn = slot_domains(seed, step, global_batch, weights, exact, room)
    ids, ids_buf = _arrow_backed((global_batch,), np.int16)
    ids[:] = drawn
    out, out_buf = _arrow_backed((global_batch, seq_len), streams[0].corpus.token_type)
    nxt = np.array(cursors, np.int64, copy=True)
    for k, stream in enumerate(streams):
        rows = np.flatnonzero(ids == k)
        if len(rows) == len(ids):  # one domain fills the batch: read straight into it
            stream.read_into(out.reshape(-1), int(nxt[k]) * seq_len)
        elif len(rows):
            stream.read_rows(out, rows, int(nxt[k]) * seq_len)
        nxt[k] += len(rows)
    return GlobalBatch(step, out, ids, nxt, out_buf, ids_buf)


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
