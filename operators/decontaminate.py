"""Decontamination: remove documents (or spans) that share word n-grams with evaluation sets."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import AtLeastOne, Operator, mark_removed, register
from storage.evalsets import load_eval_set
from storage.schema import with_column

#: a token: a run of non-space characters; matched without its punctuation
_TOKEN_RE = re.compile(r"\S+")
_NON_WORD = re.compile(r"\W+")
_WORD_RE = re.compile(r"\w")


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


@register("decontaminate")
class Decontaminate(Operator):
    """Remove what overlaps the eval sets: a document sharing any word n-gram with an eval example
    (``mode: document``, reason ``decontaminated``), or only the overlapping spans (``mode: spans``;
    a document left without a word is removed as ``decontaminated_empty``).

    Matching normalizes both sides the same way — NFC, case-folded words with inner punctuation
    dropped — and never changes the stored text except the spans ``mode: spans`` cuts. Every n-gram
    of every example is hashed into one table. An example shorter than ``2·ngram + 2`` words is
    matched with shorter n-grams, n = max(``min_words``, ⌈len/2⌉ − 1), so that a light edit in its
    middle (one word changed) still leaves a whole n-gram on one side; examples shorter than
    ``min_words`` are not matched. Eval sets use the format of :mod:`storage.evalsets`; the manifest
    records, per set, the documents it hit and how many of its examples were found (``items_found``).

    Args:
        eval_sets: eval-set files (``PATH`` or ``PATH=DOMAIN``).
        ngram: words per n-gram for examples of at least 2·ngram + 2 words (13, as GPT-3 and many
            decontamination pipelines).
        min_words: examples shorter than this many words are not matched (too generic).
        mode: ``document`` or ``spans``.
    """

    metrics_key: ClassVar[str] = "decontamination"

    def __init__(
        self,
        *,
        eval_sets: Annotated[list[str], Field(min_length=1)],
        ngram: AtLeastOne = 13,
        min_words: AtLeastOne = 8,
        mode: Literal["document", "spans"] = "document",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n, self.mode = ngram, mode
        self.names = [s.partition("=")[0] for s in eval_sets]
        self.table: dict[int, tuple[int, int]] = {}  # n-gram hash -> (set index, example index)
        self.lengths: set[int] = set()
        for si, spec in enumerate(eval_sets):
            path, _, domain = spec.partition("=")
            examples = load_eval_set(path, domain or None)
            for ei, ex in enumerate(examples):
                ws = [w for _, w in words(ex.text)]
                if len(ws) < min_words:
                    continue
                size = min(self.n, max(min_words, -(-len(ws) // 2) - 1))
                self.lengths.add(size)
                for i in range(len(ws) - size + 1):
                    self.table.setdefault(_key(ws[i : i + size]), (si, ei))
        self._metrics: dict[str, Any] = {}

    def _hits(self, text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(spans of ``text`` covered by matching n-grams, the (set, example) pairs they match)."""
        pairs = words(text)
        ms, ws = [m for m, _ in pairs], [w for _, w in pairs]
        spans, found = [], []
        for size in self.lengths:
            for i in range(len(ws) - size + 1):
                hit = self.table.get(_key(ws[i : i + size]))
                if hit is not None:
                    spans.append((ms[i].start(), ms[i + size - 1].end()))
                    found.append(hit)
        return spans, found

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        texts = batch.column("text").to_pylist()
        rows, reasons, changed = [], [], False
        for i in np.flatnonzero(active).tolist():
            spans, found = self._hits(texts[i] or "")
            if not found:
                continue
            self._count(found)
            if self.mode == "document":
                rows.append(i)
                reasons.append("decontaminated")
                continue
            kept = _cut(texts[i], spans)
            if not _WORD_RE.search(kept):  # nothing but punctuation and space left
                rows.append(i)
                reasons.append("decontaminated_empty")
            else:
                texts[i], changed = kept, True
        if changed:
            batch = with_column(batch, "text", pa.array(texts, pa.string()))
        return mark_removed(batch, np.asarray(rows), reasons, self.stage) if rows else batch

    def _count(self, found: list[tuple[int, int]]) -> None:
        sets = self._metrics.setdefault("sets", {})
        for si in {s for s, _ in found}:
            entry = sets.setdefault(self.names[si], {"documents": 0, "items_hit": {}})
            entry["documents"] += 1
        for si, ei in set(found):
            hits = sets[self.names[si]]["items_hit"]
            hits[str(ei)] = hits.get(str(ei), 0) + 1

    def drain_metrics(self) -> dict[str, Any]:
        out, self._metrics = self._metrics, {}
        return out

    @classmethod
    def finish_metrics(cls, metrics: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Per eval set: its size, the documents hit, the examples found (``items_found``)."""
        sizes = {}
        for spec in params.get("eval_sets", []):
            path, _, domain = spec.partition("=")
            sizes[path] = len(load_eval_set(path, domain or None))
        sets = {}
        for name, entry in metrics.get("sets", {}).items():
            sets[name] = {
                "items": sizes.get(name),
                "items_found": len(entry.get("items_hit", {})),
                "documents": int(entry.get("documents", 0)),
                "items_hit": entry.get("items_hit", {}),
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
