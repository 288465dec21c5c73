"""Tokenize for training: token ids (EOS appended) and a deterministic train/holdout split."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import AtLeastOne, Operator, check_params, mark_removed, register
from storage.schema import score_field, with_column

logger = logging.getLogger(__name__)

#: where a long document may be cut: before a space between two non-space characters, or after a
#: newline between two non-space characters (both are pre-tokenizer boundaries of byte-level BPE and WordPiece)
CUT_RE = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")
#: strings on which a tokenizer must give the same ids whole and cut at every CUT_RE position
PROBES = (
    "Hello world, it's 2024: one two  three.",
    "def f(a, b):\n    return a + b  # sum\nx = f(1, 2)",
    "The end.\nNext line\n\nNew paragraph\tand a tab.",
    "日本語のテキスト。\n次の行です。",
)


def _last_cut(text: str, lo: int, hi: int) -> int:
    """The last ``CUT_RE`` position p with lo < p <= hi, or ``hi`` if there is none."""
    end = min(len(text), hi + 2)  # the lookahead of a cut at hi needs text[hi] and text[hi + 1]
    span = 4096
    while True:
        start = max(lo + 1, hi - span)
        last = None
        for m in CUT_RE.finditer(text, start, end):
            if m.start() <= hi:
                last = m.start()
        if last is not None:
            return last
        if start == lo + 1:
            return hi
        span *= 16


def pieces(text: str, size: int) -> Iterator[str]:
    """``text`` as consecutive pieces of at most ``size`` characters that join back to ``text``.

    Each piece but the last ends at the last ``CUT_RE`` position within ``size`` characters
    (the next piece starts with that space, or after that newline); where a whole ``size``
    window has no such position (a long stretch without spaces or single newlines) the
    piece is cut at exactly ``size`` characters.
    """
    s = 0
    while len(text) - s > size:
        p = _last_cut(text, s, s + size)
        yield text[s:p]
        s = p
    yield text[s:]


def exact_cuts(tok) -> bool:
    """Whether ``tok`` (a :class:`~operators.models.TokenIds`) gives the same ids for the ``PROBES`` whole as
    cut at every ``CUT_RE`` position.

    True for the packaged SmolLM2 (byte-level BPE) and MiniLM (WordPiece) tokenizers, and
    expected for other byte-level BPE ones (GPT-2, Llama 3, Qwen); false for a tokenizer that
    treats the start of every call specially (e.g. SentencePiece / Metaspace prepending "▁").
    """
    texts: list[str] = []
    for t in PROBES:
        texts.append(t)
        for m in CUT_RE.finditer(t):
            texts += [t[: m.start()], t[m.start() :]]
    enc = iter(tok.ids(texts))
    for t in PROBES:
        whole = next(enc)
        for _ in CUT_RE.finditer(t):
            if next(enc) + next(enc) != whole:
                return False
    return True


@register("tokenize")
class Tokenize(Operator):
    """Write ``tokens`` (list<int32>, EOS appended) and ``n_tokens`` with a Hugging Face tokenizer (its Rust
    backend, :class:`~operators.models.TokenIds`: the ids transformers gives).

    Work per tokenizer call is bounded: texts are tokenized in calls of at most
    ``chunk_chars`` characters in total, and a document longer than ``chunk_chars`` is cut
    into pieces (:func:`pieces`) that are tokenized one call each and concatenated (with
    ``max_tokens``, no piece past the limit is tokenized). Pieces are cut before a space
    between two non-space characters or after a newline between two non-space characters:
    for byte-level BPE (the packaged SmolLM2; GPT-2, Llama 3, Qwen) and WordPiece tokenizers
    these are pre-tokenizer boundaries, so the ids equal whole-document tokenization (tested
    on 50 MB of Python source: identical ids).
    They can differ around a cut (a token or two) when (a) a stretch of ``chunk_chars``
    characters has no such boundary (base64, long runs of CJK without newlines, …) and is cut
    at exactly ``chunk_chars``, or (b) the tokenizer treats the start of every call
    specially (SentencePiece / Metaspace prefixing "▁"); (b) is detected on probe strings when
    the operator is built and logged as a warning. Documents of at most ``chunk_chars``
    characters are never cut.

    Documents longer than ``max_chars`` characters are removed (``tokenize_too_long``)
    before any tokenizing.

    Args:
        tokenizer: model spec whose tokenizer to use (``packaged:<name>``, a path or a hub id).
        add_eos: append the tokenizer's EOS id to every document (the packer's separator).
        max_tokens: truncate documents to this many tokens (before EOS); None keeps all.
        max_chars: remove documents longer than this many characters (``tokenize_too_long``);
            None: no limit.
        chunk_chars: characters per tokenizer call (the memory bound; its cost per character is in
            BENCHMARKS.md); longer documents are cut into pieces.
    """

    adds = ("tokens", "n_tokens")

    def __init__(
        self,
        *,
        tokenizer: str = "packaged:smollm2-135m",
        add_eos: bool = True,
        max_tokens: AtLeastOne | None = None,
        max_chars: AtLeastOne | None = 10_000_000,
        chunk_chars: AtLeastOne = 100_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from operators.models import load_token_ids

        self.spec = tokenizer
        self.tok = load_token_ids(tokenizer)
        if add_eos and self.tok.eos_token_id is None:
            raise ValueError(f"tokenize: tokenizer {tokenizer!r} has no EOS token; set add_eos: false")
        self.eos = self.tok.eos_token_id if add_eos else None
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.chunk_chars = chunk_chars
        self.exact_cuts = exact_cuts(self.tok)
        if not self.exact_cuts:
            logger.warning(
                "tokenize: tokenizer %r gives other ids for text cut at spaces/newlines than whole; documents "
                "over chunk_chars=%d characters may differ from whole-document tokenization around each cut",
                tokenizer,
                chunk_chars,
            )

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        from operators.models import check_spec

        check_params(cls, params)
        check_spec(params.get("tokenizer", "packaged:smollm2-135m"))

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids (int32, no EOS, at most ``max_tokens``) of each text, ``chunk_chars`` characters a call."""
        parts: list[list[np.ndarray]] = [[] for _ in texts]
        pending: list[int] = []
        size = 0

        def run(ks: list[int], strs: list[str]) -> None:
            enc = self.tok.ids(strs)
            for k, ids in zip(ks, enc):
                parts[k].append(np.asarray(ids, dtype=np.int32))

        for k, text in enumerate(texts):
            if len(text) > self.chunk_chars:  # cut into pieces, one call each, until max_tokens
                n = 0
                for piece in pieces(text, self.chunk_chars):
                    run([k], [piece])
                    n += len(parts[k][-1])
                    if self.max_tokens is not None and n >= self.max_tokens:
                        break
                continue
            if size + len(text) > self.chunk_chars and pending:
                run(pending, [texts[j] for j in pending])
                pending, size = [], 0
            pending.append(k)
            size += len(text)
        if pending:
            run(pending, [texts[j] for j in pending])
        out = [np.concatenate(p) if len(p) != 1 else p[0] for p in parts]
        return out if self.max_tokens is None else [x[: self.max_tokens] for x in out]

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        idx = np.flatnonzero(active)
        col = batch.column("text").take(pa.array(idx))
        if self.max_chars is not None:
            chars = pc.utf8_length(col).fill_null(0).to_numpy(zero_copy_only=False)
            over = chars > self.max_chars
        else:
            over = np.zeros(idx.size, dtype=bool)
        rows = idx[~over]
        texts = [t or "" for t in col.filter(pa.array(~over)).to_pylist()]
        ids = self.encode(texts)
        if self.eos is not None:
            eos = np.array([self.eos], dtype=np.int32)
            ids = [np.concatenate([x, eos]) for x in ids]
        n = batch.num_rows
        counts = np.zeros(n, dtype=np.int64)
        counts[rows] = [len(x) for x in ids]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise ValueError(f"tokenize: {offsets[-1]} tokens in one batch overflow list<int32>; use smaller batches")
        missing = np.ones(n, dtype=bool)
        missing[rows] = False
        values = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        tokens = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)),
            pa.array(values),
            type=score_field("tokens").type,
            mask=pa.array(missing),
        )
        batch = with_column(batch, "tokens", tokens)
        batch = with_column(batch, "n_tokens", pa.array(counts, pa.int64(), mask=missing))
        if over.any():
            hit = idx[over]
            batch = mark_removed(batch, hit, ["tokenize_too_long"] * hit.size, self.stage)
        return batch
