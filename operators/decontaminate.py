"""Decontamination: remove documents (or spans) that share word n-grams with evaluation sets."""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import NOT_BOOL, AtLeastOne, Operator, mark_removed, register
from storage.evalsets import EvalExample, load_eval_set
from storage.schema import with_column

#: a token: a run of non-space characters; matched without its punctuation
_TOKEN_RE = re.compile(r"\S+")
_NON_WORD = re.compile(r"\W+")
_WORD_RE = re.compile(r"\w")

#: a false-positive rate of a Bloom filter, in (0, 1)
FalsePositiveRate = Annotated[float, NOT_BOOL, Field(gt=0, lt=1)]


def words(text: str) -> list[tuple[re.Match, str]]:
    """The words of ``text`` for matching — whitespace-separated tokens, case-folded, punctuation
    dropped ("It's," and "its" match; "x(y)" and "xy" too) — with their spans in the original text;
    tokens of punctuation only are skipped."""
    text = unicodedata.normalize("NFC", text) if not text.isascii() else text
    out = []
    for m in _TOKEN_RE.finditer(text):
        w = _NON_WORD.sub("", m.group()).casefold()
        if w:
            out.append((m, w))
    return out


def _key(ws: list[str]) -> int:
    return hash(" ".join(ws))  # within one process; the table is built in the process that looks it up


def matchable(examples: list[EvalExample], ngram: int, min_words: int) -> Iterator[tuple[int, list[str], int]]:
    """(example index, its words, its n-gram size) of the examples long enough to match."""
    for ei, ex in enumerate(examples):
        ws = [w for _, w in words(ex.text)]
        if len(ws) >= min_words:
            yield ei, ws, min(ngram, max(min_words, -(-len(ws) // 2) - 1))


def bloom_size(n: int, false_positive_rate: float) -> tuple[int, int]:
    """(bits m, probes k) of a Bloom filter for ``n`` keys: m = −n ln p / (ln 2)², k = (m / n) ln 2."""
    m = max(64, math.ceil(-n * math.log(false_positive_rate) / math.log(2) ** 2))
    return m, max(1, round(m / max(n, 1) * math.log(2)))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a second 64-bit hash derived from the first (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class BloomFilter:
    """A Bloom filter of 64-bit keys in a numpy bit array.

    The k probe positions of key h come from h alone by enhanced double hashing (Dillinger &
    Manolios) on 64-bit values: x₀ = h, s₀ = mix(h), xᵢ₊₁ = xᵢ + sᵢ, sᵢ₊₁ = sᵢ + i (mod 2⁶⁴), probe
    i at xᵢ mod m. Reducing mod m only at the end matters: with x and s kept mod m, two keys share
    all their probes with probability 1/m², a floor of n/m² under the false-positive rate (1e-7
    for 5,000 n-grams at 43 bits each, a hundred times 1e-9). Lookups are vectorised over many keys
    and drop a key at its first unset bit: at the optimal fill (half the bits set) an absent key
    costs two probes on average, whatever k is.

    Args:
        n: the number of keys the filter is sized for (more keys raise the false-positive rate).
        false_positive_rate: the chance that a lookup of an absent key answers "present", at n keys.
    """

    def __init__(self, n: int, false_positive_rate: float) -> None:
        self.m, self.k = bloom_size(n, false_positive_rate)
        self.bits = np.zeros((self.m + 7) // 8, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    @staticmethod
    def _next(x: np.ndarray, step: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(probe i + 1, its step) from probe i and its step, wrapping at 2**64."""
        return x + step, step + np.uint64(i)

    def _bit(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(byte index, bit mask) of probes."""
        pos = x % np.uint64(self.m)
        return pos >> np.uint64(3), np.left_shift(np.uint8(1), (pos & np.uint64(7)).astype(np.uint8))

    def add(self, keys: np.ndarray, chunk: int = 1 << 20) -> None:
        """Insert ``keys`` (uint64)."""
        for s in range(0, len(keys), chunk):
            x = keys[s : s + chunk]
            step = _mix(x)
            for i in range(self.k):
                np.bitwise_or.at(self.bits, *self._bit(x))
                x, step = self._next(x, step, i)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """A boolean mask: True where a key of ``keys`` (uint64) may be in the filter, False where it is not."""
        byte, mask = self._bit(keys)
        alive = np.flatnonzero(self.bits[byte] & mask)  # keys whose probes so far all found a set bit
        x = keys[alive]
        step = _mix(x)  # only for the keys that passed the first probe
        for i in range(1, self.k):
            x, step = self._next(x, step, i - 1)
            byte, mask = self._bit(x)
            keep = (self.bits[byte] & mask) != 0
            alive, x, step = alive[keep], x[keep], step[keep]
            if not len(alive):
                break
        out = np.zeros(len(keys), dtype=bool)
        out[alive] = True
        return out


@register("decontaminate")
class Decontaminate(Operator):
    """Remove what overlaps the eval sets: a document sharing any word n-gram with an eval example
    (``mode: document``, reason ``decontaminated``), or only the overlapping spans (``mode: spans``;
    a document left without a word is removed as ``decontaminated_empty``).

    Matching normalizes both sides the same way — NFC, case-folded words with inner punctuation
    dropped — and never changes the stored text except the spans ``mode: spans`` cuts. An example
    shorter than ``2·ngram + 2`` words is matched with shorter n-grams, n = max(``min_words``,
    ⌈len/2⌉ − 1), so that a light edit in its middle (one word changed) still leaves a whole n-gram
    on one side; examples shorter than ``min_words`` are not matched. Eval sets use the format of
    :mod:`storage.evalsets`.

    Index: with ``index: exact`` every n-gram hash of every example is a key of one table that
    names the example it came from; the manifest records, per set, the documents it hit and which
    of its examples were found (``items_found``, ``items_hit``). With ``index: bloom`` each eval set
    gets a Bloom filter sized from its n-gram count (repeats included, so the configured rate is an
    upper bound) and ``false_positive_rate``: 43 bits per n-gram at 1e-9, where the exact table
    holds a Python int, a tuple and a dict slot per n-gram. It still says which set a document hit,
    but not which example (``items_found`` is null), and an n-gram it has never seen matches with
    probability ``false_positive_rate`` per lookup. So the manifest records per set the filter
    (n-grams, bits, probes, rate), the lookups made, the n-grams that matched and
    ``false_documents_expected_max`` = lookups × rate, a bound on the expected number of documents
    counted (and removed, or in spans mode cut) by a false match alone. To learn which examples
    leaked, run ``index: exact`` over the removed rows.

    Either index is built once per worker process, from the eval-set files, when the runner first
    builds the stage there (it caches operators per process); nothing goes through the object store,
    as the n-gram hash is Python's, salted per process.

    Args:
        eval_sets: eval-set files (``PATH`` or ``PATH=DOMAIN``).
        ngram: words per n-gram for examples of at least 2·ngram + 2 words (13, as GPT-3 and many
            decontamination pipelines).
        min_words: examples shorter than this many words are not matched (too generic).
        mode: ``document`` or ``spans``.
        index: ``exact`` (a hash table that knows each n-gram's example) or ``bloom`` (a Bloom filter
            per eval set: a few bytes per n-gram, for eval sets too large to hold exactly).
        false_positive_rate: per n-gram lookup, for ``index: bloom`` only (default 1e-9: a
            1,000-word document makes ~1,000 lookups per set, so about one clean document in a
            million is removed by a false match).
    """

    metrics_key: ClassVar[str] = "decontamination"
    #: the Bloom filter's false-positive rate when ``index: bloom`` does not give one
    DEFAULT_FALSE_POSITIVE_RATE: ClassVar[float] = 1e-9

    def __init__(
        self,
        *,
        eval_sets: Annotated[list[str], Field(min_length=1)],
        ngram: AtLeastOne = 13,
        min_words: AtLeastOne = 8,
        mode: Literal["document", "spans"] = "document",
        index: Literal["exact", "bloom"] = "exact",
        false_positive_rate: FalsePositiveRate | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if index == "exact" and false_positive_rate is not None:
            raise ValueError(
                f"decontaminate: false_positive_rate ({false_positive_rate}) applies to index: bloom only, "
                "got index: exact (an exact index has no false positives)"
            )
        self.n, self.mode, self.index = ngram, mode, index
        self.rate = false_positive_rate or self.DEFAULT_FALSE_POSITIVE_RATE
        self.names = [s.partition("=")[0] for s in eval_sets]
        self.table: dict[int, tuple[int, int]] = {}  # exact: n-gram hash -> (set index, example index)
        self.filters: list[tuple[BloomFilter, frozenset[int]]] = []  # bloom: per set, (filter, n-gram sizes)
        self.lengths: set[int] = set()
        for si, spec in enumerate(eval_sets):
            path, _, domain = spec.partition("=")
            keys, sizes = array("q"), set()
            for ei, ws, size in matchable(load_eval_set(path, domain or None), ngram, min_words):
                sizes.add(size)
                grams = (_key(ws[i : i + size]) for i in range(len(ws) - size + 1))
                if index == "bloom":
                    keys.extend(grams)
                else:
                    for k in grams:
                        self.table.setdefault(k, (si, ei))
            self.lengths |= sizes
            if index == "bloom":
                f = BloomFilter(len(keys), self.rate)
                f.add(np.frombuffer(keys, dtype=np.int64).view(np.uint64))
                self.filters.append((f, frozenset(sizes)))
        self._metrics: dict[str, Any] = {}

    @property
    def index_bytes(self) -> int:
        """Bytes of the Bloom filters' bit arrays (0 for the exact index)."""
        return sum(f.nbytes for f, _ in self.filters)

    def _hits(self, docs: list[list[str]]) -> Iterator[tuple[int, int, int, int, int]]:
        """(document, first word, words, set, example) of every n-gram of ``docs`` that matches: a
        table lookup per n-gram, or under Bloom filters one vectorised lookup per n-gram size and set
        for the whole batch (the example is then -1: a filter does not know it)."""
        if self.index == "exact":
            get = self.table.get
            for d, ws in enumerate(docs):
                for size in self.lengths:
                    for i in range(len(ws) - size + 1):
                        hit = get(_key(ws[i : i + size]))
                        if hit is not None:
                            yield d, i, size, *hit
            return
        for size in sorted(self.lengths):
            counts = [max(0, len(ws) - size + 1) for ws in docs]
            keys = [_key(ws[i : i + size]) for ws in docs for i in range(len(ws) - size + 1)]
            keys = np.array(keys, dtype=np.int64).view(np.uint64)
            offsets = np.cumsum([0, *counts])
            for si, (f, sizes) in enumerate(self.filters):
                if size not in sizes or not len(keys):
                    continue
                js = np.flatnonzero(f.contains(keys))
                self._add(si, "lookups", len(keys))
                self._add(si, "ngram_hits", len(js))
                for j, d in zip(js.tolist(), (np.searchsorted(offsets, js, side="right") - 1).tolist()):
                    yield d, j - int(offsets[d]), size, si, -1

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        texts = batch.column("text").to_pylist()
        idx = np.flatnonzero(active).tolist()
        # words only: the batch's match objects, all alive at once, would keep the garbage collector busy
        hits: list[list[tuple[int, int, int, int]]] = [[] for _ in idx]
        for d, i, size, si, ei in self._hits([[w for _, w in words(texts[r] or "")] for r in idx]):
            hits[d].append((i, size, si, ei))
        rows, reasons, changed = [], [], False
        for d, r in enumerate(idx):
            if not hits[d]:
                continue
            self._count({(si, ei) for _, _, si, ei in hits[d]})
            if self.mode == "document":
                rows.append(r)
                reasons.append("decontaminated")
                continue
            ms = [m for m, _ in words(texts[r])]
            kept = _cut(texts[r], [(ms[i].start(), ms[i + size - 1].end()) for i, size, _, _ in hits[d]])
            if not _WORD_RE.search(kept):  # nothing but punctuation and space left
                rows.append(r)
                reasons.append("decontaminated_empty")
            else:
                texts[r], changed = kept, True
        if changed:
            batch = with_column(batch, "text", pa.array(texts, pa.string()))
        return mark_removed(batch, np.asarray(rows), reasons, self.stage) if rows else batch

    def _add(self, si: int, counter: str, k: int) -> None:
        entry = self._metrics.setdefault("sets", {}).setdefault(self.names[si], {})
        entry[counter] = entry.get(counter, 0) + k

    def _count(self, found: set[tuple[int, int]]) -> None:
        """One document's matches: a document per set it hit, and (exact index) a document per example."""
        for si in {s for s, _ in found}:
            self._add(si, "documents", 1)
        for si, ei in found:
            if ei >= 0:
                hits = self._metrics["sets"][self.names[si]].setdefault("items_hit", {})
                hits[str(ei)] = hits.get(str(ei), 0) + 1

    def drain_metrics(self) -> dict[str, Any]:
        out, self._metrics = self._metrics, {}
        return out

    @classmethod
    def finish_metrics(cls, metrics: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Per eval set (every set, hit or not): its size, the documents hit, the examples found
        (``items_found``; null under a Bloom filter) and the index that matched, with its error bound."""
        ngram, min_words = params.get("ngram", 13), params.get("min_words", 8)
        bloom = params.get("index", "exact") == "bloom"
        rate = params.get("false_positive_rate") or cls.DEFAULT_FALSE_POSITIVE_RATE
        sets = {}
        for spec in params.get("eval_sets", []):
            path, _, domain = spec.partition("=")
            examples = load_eval_set(path, domain or None)
            entry = metrics.get("sets", {}).get(path, {})
            out: dict[str, Any] = {"items": len(examples), "documents": int(entry.get("documents", 0))}
            if not bloom:
                hit = entry.get("items_hit", {})
                sets[path] = {**out, "items_found": len(hit), "items_hit": hit, "index": {"kind": "exact"}}
                continue
            n = sum(len(ws) - size + 1 for _, ws, size in matchable(examples, ngram, min_words))
            bits, probes = bloom_size(n, rate)
            lookups = int(entry.get("lookups", 0))
            sets[path] = {
                **out,
                "items_found": None,  # a Bloom filter does not know which example an n-gram came from
                "items_hit": None,
                "index": {"kind": "bloom", "false_positive_rate": rate, "ngrams": n, "bits": bits, "probes": probes},
                "lookups": lookups,
                "ngram_hits": int(entry.get("ngram_hits", 0)),
                "false_documents_expected_max": float(f"{lookups * rate:.3g}"),
            }
        return {"sets": sets}


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the union of ``spans``."""
    out, pos = [], 0
    for a, b in sorted(spans):
        if a > pos:
            out.append(text[pos:a])
        pos = max(pos, b)
    out.append(text[pos:])
    return "".join(out)
