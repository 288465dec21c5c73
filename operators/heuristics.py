"""Heuristic text filters as FineWeb applies them: Gopher quality and repetition, C4, FineWeb, length.

Each rule, default and reason code follows datatrove's implementation (``GopherQualityFilter``,
``GopherRepetitionFilter``, ``C4QualityFilter``, ``FineWebQualityFilter``), rules checked in the same order so a
document fails with the same reason. Words come from :func:`operators.words.split_words`, a regex that tracks
datatrove's spaCy tokenizer; see its docstring for the known differences. Unlike datatrove, a threshold is
switched off with ``None`` (datatrove also treats ``0`` as off; here ``0`` is a real threshold).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import (
    NOT_BOOL,
    AtLeastOne,
    Filter,
    NonNegative,
    NonNegativeInt,
    Operator,
    Probability,
    mark_removed,
    register,
)
from operators.words import PUNCTUATION_CHARS, TERMINAL_PUNCTUATION, count_sentences, split_words
from storage.schema import with_column

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def _check_order(op: str, lo_name: str, lo: float | None, hi_name: str, hi: float | None) -> None:
    """A relation between two parameters (each one's own range is on its annotation)."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(
            f"{op}: {lo_name}={lo!r} is greater than {hi_name}={hi!r}; the minimum must not exceed the maximum"
        )


def find_duplicates(items: Sequence[str]) -> tuple[int, int]:
    """(number, total characters) of the items that repeat an earlier item, as Gopher counts duplicates."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


@register("gopher_quality")
class GopherQuality(Filter):
    """Gopher's quality rules (Rae et al. 2021, datatrove ``GopherQualityFilter``).

    Args:
        min_doc_words: remove documents with fewer non-symbol words (``gopher_short_doc``).
        max_doc_words: remove documents with more non-symbol words (``gopher_long_doc``).
        min_avg_word_length: remove when the mean non-symbol word length is below (``gopher_below_avg_threshold``).
        max_avg_word_length: remove when it is above (``gopher_above_avg_threshold``).
        max_symbol_word_ratio: remove when ``#`` per word (``gopher_too_many_hashes``) or ``...``/``…`` per word
            (``gopher_too_many_ellipsis``) exceeds this.
        max_bullet_lines_ratio: remove when more lines start with ``•`` or ``-`` (``gopher_too_many_bullets``).
        max_ellipsis_lines_ratio: remove when more lines end with an ellipsis (``gopher_too_many_end_ellipsis``).
        min_alpha_words_ratio: remove when fewer words contain a letter (``gopher_below_alpha_threshold``);
            datatrove calls it ``max_non_alpha_words_ratio``.
        min_stop_words: remove when fewer distinct stop words occur, case-sensitively
            (``gopher_enough_stop_words``, datatrove's code).
        stop_words: the stop words; default ``the be to of and that have with``.
    """

    def __init__(
        self,
        *,
        min_doc_words: NonNegativeInt | None = 50,
        max_doc_words: NonNegativeInt | None = 100_000,
        min_avg_word_length: NonNegative | None = 3,
        max_avg_word_length: NonNegative | None = 10,
        max_symbol_word_ratio: NonNegative | None = 0.1,
        max_bullet_lines_ratio: Probability | None = 0.9,
        max_ellipsis_lines_ratio: Probability | None = 0.3,
        min_alpha_words_ratio: Probability | None = 0.8,
        min_stop_words: NonNegativeInt | None = 2,
        stop_words: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        op = "gopher_quality"
        _check_order(op, "min_doc_words", min_doc_words, "max_doc_words", max_doc_words)
        _check_order(op, "min_avg_word_length", min_avg_word_length, "max_avg_word_length", max_avg_word_length)
        self.min_doc_words = min_doc_words
        self.max_doc_words = max_doc_words
        self.min_avg_word_length = min_avg_word_length
        self.max_avg_word_length = max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(STOP_WORDS if stop_words is None else stop_words)

    def check(self, text: str) -> str | None:
        text = text or ""
        words = split_words(text)
        n_words = len(words) or 1  # only reachable with an empty text and min_doc_words off
        # a word is a symbol if all its characters are punctuation; most words end in a letter, so test that first
        pset = PUNCTUATION_CHARS
        real = [w for w in words if w[-1] not in pset or not pset.issuperset(w)]
        n_real = len(real)
        if self.min_doc_words is not None and n_real < self.min_doc_words:
            return "gopher_short_doc"
        if self.max_doc_words is not None and n_real > self.max_doc_words:
            return "gopher_long_doc"

        if self.min_avg_word_length is not None or self.max_avg_word_length is not None:
            avg = sum(map(len, real)) / n_real if n_real else float("nan")
            if self.min_avg_word_length is not None and avg < self.min_avg_word_length:
                return "gopher_below_avg_threshold"
            if self.max_avg_word_length is not None and avg > self.max_avg_word_length:
                return "gopher_above_avg_threshold"

        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > self.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"

        if self.max_bullet_lines_ratio is not None or self.max_ellipsis_lines_ratio is not None:
            lines = text.splitlines() or [""]
            if self.max_bullet_lines_ratio is not None:
                bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
                if bullets / len(lines) > self.max_bullet_lines_ratio:
                    return "gopher_too_many_bullets"
            if self.max_ellipsis_lines_ratio is not None:
                ellipses = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
                if ellipses / len(lines) > self.max_ellipsis_lines_ratio:
                    return "gopher_too_many_end_ellipsis"

        if self.min_alpha_words_ratio is not None:
            # words without a letter: the symbols, plus numbers and the like among the real words
            n_alpha = sum(1 for w in real if w.isalpha() or any(c.isalpha() for c in w))
            if n_alpha / n_words < self.min_alpha_words_ratio:
                return "gopher_below_alpha_threshold"

        if self.min_stop_words is not None and len(self.stop_words.intersection(words)) < self.min_stop_words:
            return "gopher_enough_stop_words"
        return None


_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINES_RE = re.compile(r"\n+")
_TOP_N_GRAMS = ((2, 0.2), (3, 0.18), (4, 0.16))
_DUP_N_GRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


_MIX = np.uint64(0x9E3779B97F4A7C15)


class NGrams:
    """The word n-grams of one document as 64-bit rolling hashes, so repeats are counted in numpy.

    An n-gram is the tuple of its words (datatrove joins them into a string, which can only differ when two
    different word sequences concatenate to the same characters). Repeated n-grams are confirmed on the words
    themselves; the most-frequent count trusts the 64-bit hashes (a collision, odds about 1e-14 per document,
    could only raise a count).

    Args:
        words: the document's words, in order.
    """

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self._h1 = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self._cum = np.concatenate(([0], np.cumsum(lengths))).tolist()  # characters of words[i:j]: cum[j] - cum[i]
        self._n, self._g = 1, self._h1

    def hashes(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each position (``len(words) - n + 1`` values)."""
        if n < self._n:
            self._n, self._g = 1, self._h1
        while self._n < n:
            self._g = self._g[:-1] * _MIX + self._h1[self._n :]
            self._n += 1
        return self._g

    def top_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram: its length with spaces, times its count.

        Ties go to the n-gram seen first, like datatrove's ``Counter.most_common``.
        """
        g = self.hashes(n)
        if len(g) == 0:
            return 0
        s = np.sort(g)
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        counts = np.diff(np.append(starts, len(s)))
        top = int(counts.max())
        i = 0 if top == 1 else int(np.flatnonzero(_isin(g, s[starts[counts == top]]))[0])
        return (self._cum[i + n] - self._cum[i] + n - 1) * top

    def duplicated_chars(self, n: int) -> int:
        """Characters (spaces excluded) in n-grams that repeat an earlier one, skipping past each repeat.

        The greedy left-to-right scan of datatrove's ``find_all_duplicate``, visiting only the positions whose
        n-gram occurs more than once (the only ones that can count). 0 means no n-gram repeats at all.
        """
        g = self.hashes(n)
        s = np.sort(g)
        repeated = s[1:][s[1:] == s[:-1]]
        if len(repeated) == 0:
            return 0
        positions = np.flatnonzero(_isin(g, repeated))
        words, cum = self.words, self._cum
        seen: dict[int, int] = {}
        total = skip_to = 0
        for i, key in zip(positions.tolist(), g[positions].tolist()):
            if i < skip_to:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = i
            elif words[first : first + n] == words[i : i + n]:
                total += cum[i + n] - cum[i]
                skip_to = i + n
        return total


def _isin(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin`` for a handful of wanted values, without its sorting overhead."""
    if len(wanted) > 16:
        return np.isin(values, wanted)
    mask = values == wanted[0]
    for w in wanted[1:]:
        mask |= values == w
    return mask


#: an integer >= 0, or -1 to switch a C4 rule off
IntOrOff = Annotated[int, NOT_BOOL, Field(ge=-1)]
#: ``[n, max_fraction]`` pairs: word n-gram length n >= 1 and a fraction in [0, 1]
NGramFractions = tuple[tuple[AtLeastOne, Probability], ...]


@register("gopher_repetition")
class GopherRepetition(Filter):
    """Gopher's repetition rules (Rae et al. 2021, Table A1; datatrove ``GopherRepetitionFilter``).

    Paragraphs are split on blank lines, lines on newlines; character fractions are over the whole text.

    Args:
        dup_line_frac: max fraction of lines that repeat an earlier line (``dup_line_frac``).
        dup_para_frac: max fraction of paragraphs that repeat an earlier one (``dup_para_frac``).
        dup_line_char_frac: max fraction of characters in repeated lines (``dup_line_char_frac``).
        dup_para_char_frac: max fraction of characters in repeated paragraphs (``dup_para_char_frac``).
        top_n_grams: ``[n, max_fraction]`` pairs: max fraction of characters covered by the most frequent
            word n-gram (``top_{n}_gram``).
        dup_n_grams: ``[n, max_fraction]`` pairs: max fraction of characters in repeated word n-grams
            (``duplicated_{n}_n_grams``).
    """

    def __init__(
        self,
        *,
        dup_line_frac: Probability | None = 0.3,
        dup_para_frac: Probability | None = 0.3,
        dup_line_char_frac: Probability | None = 0.2,
        dup_para_char_frac: Probability | None = 0.2,
        top_n_grams: NGramFractions = _TOP_N_GRAMS,
        dup_n_grams: NGramFractions = _DUP_N_GRAMS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.dup_line_frac = dup_line_frac
        self.dup_para_frac = dup_para_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.top_n_grams = tuple((int(n), float(f)) for n, f in top_n_grams)
        self.dup_n_grams = tuple((int(n), float(f)) for n, f in dup_n_grams)

    def check(self, text: str) -> str | None:
        if not text:
            return None  # nothing repeats in an empty document (datatrove divides by zero here)
        n_chars = len(text)
        paragraphs = _PARAGRAPH_RE.split(text.strip())
        n_dup, dup_chars = find_duplicates(paragraphs)
        if self.dup_para_frac is not None and n_dup / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and dup_chars / n_chars > self.dup_para_char_frac:
            return "dup_para_char_frac"

        lines = _LINES_RE.split(text)
        n_dup, dup_chars = find_duplicates(lines)
        if self.dup_line_frac is not None and n_dup / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and dup_chars / n_chars > self.dup_line_char_frac:
            return "dup_line_char_frac"

        if not self.top_n_grams and not self.dup_n_grams:
            return None
        grams = NGrams(split_words(text))
        for n, frac in self.top_n_grams:
            if grams.top_chars(n) / n_chars > frac:
                return f"top_{n}_gram"
        # once no n-gram repeats, no longer n-gram can: skip every n at or above the shortest such n
        clean_from = len(grams.words) + 1
        for n, frac in self.dup_n_grams:
            if n >= clean_from:
                continue
            chars = grams.duplicated_chars(n)
            if chars == 0:
                clean_from = n
            elif chars / n_chars > frac:
                return f"duplicated_{n}_n_grams"
        return None


_CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@register("c4")
class C4Quality(Operator):
    """C4's line and document rules (Raffel et al. 2020; datatrove ``C4QualityFilter``). Rewrites ``text``.

    Each line (split on line breaks, stripped) is kept only if it has no word longer than
    ``max_word_length``, ends in terminal punctuation (``. ? ! " '``, not ``...``), has at least
    ``min_words_per_line`` words and mentions neither "javascript" nor a cookie/terms policy. A kept line with
    "lorem ipsum" (``lorem_ipsum``) or "{" (``curly_bracket``) removes the document, as do fewer than
    ``min_num_sentences`` sentences in the kept lines (``too_few_sentences``). Surviving documents keep only
    their kept lines. Wikipedia-style citations ("[1]", "[edit]") are deleted from lines first.
    datatrove's ``split_paragraph=False`` mode (sentences instead of lines) is not offered.

    Args:
        remove_citations: delete "[12]", "[edit]" and "[citation needed]" from lines.
        filter_no_terminal_punct: drop lines that do not end in terminal punctuation.
        min_num_sentences: remove documents with fewer sentences in their kept lines; -1 switches it off.
        min_words_per_line: drop lines with fewer whitespace-separated words; -1 switches it off.
        max_word_length: drop lines with a longer word; -1 switches it off.
        filter_lorem_ipsum: remove documents with "lorem ipsum" in a kept line.
        filter_javascript: drop lines mentioning "javascript".
        filter_curly_bracket: remove documents with "{" in a kept line.
        filter_policy: drop lines with cookie or terms-of-use phrases.
    """

    def __init__(
        self,
        *,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        min_num_sentences: IntOrOff = 5,
        min_words_per_line: IntOrOff = 3,
        max_word_length: IntOrOff = 1000,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.remove_citations = remove_citations
        self.filter_no_terminal_punct = filter_no_terminal_punct
        self.min_num_sentences = min_num_sentences
        self.min_words_per_line = min_words_per_line
        self.max_word_length = max_word_length
        self.filter_lorem_ipsum = filter_lorem_ipsum
        self.filter_javascript = filter_javascript
        self.filter_curly_bracket = filter_curly_bracket
        self.filter_policy = filter_policy

    def filter_text(self, text: str) -> tuple[str | None, str]:
        """Return (reason or None, text made of the kept lines)."""
        max_len = self.max_word_length
        min_sent = self.min_num_sentences
        kept: list[str] = []
        n_sentences = 0
        for line in (text or "").splitlines():
            line = line.strip()
            words = line.split()
            if max_len != -1 and len(line) > max_len and any(len(w) > max_len for w in words):
                continue
            if self.remove_citations and "[" in line:
                line = _CITATION_RE.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(_END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(words) < self.min_words_per_line:
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "lorem_ipsum", text
            if self.filter_javascript and "javascript" in lower:
                continue
            if self.filter_curly_bracket and "{" in line:
                return "curly_bracket", text
            if self.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
                continue
            if min_sent != -1 and n_sentences < min_sent:  # only the count up to the threshold matters
                n_sentences += count_sentences(line)
            kept.append(line)
        if n_sentences < min_sent:
            return "too_few_sentences", text
        return None, "\n".join(kept).strip()

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        texts = batch.column("text").to_pylist()
        hit: list[int] = []
        reasons: list[str] = []
        changed = False
        for i in np.flatnonzero(active).tolist():
            reason, new = self.filter_text(texts[i])
            if reason is not None:
                hit.append(i)
                reasons.append(reason)
            elif new != texts[i]:
                texts[i] = new
                changed = True
        if changed:
            batch = with_column(batch, "text", pa.array(texts, pa.string()))
        if hit:
            batch = mark_removed(batch, np.asarray(hit), reasons, self.stage)
        return batch


@register("fineweb_quality")
class FineWebQuality(Filter):
    """FineWeb's own line rules (Penedo et al. 2024; datatrove ``FineWebQualityFilter``).

    Lines are the non-blank lines of the text (split on "\\n", not stripped).

    Args:
        line_punct_thr: remove when fewer lines end in terminal punctuation (``line_punct_ratio``).
        line_punct_exclude_zero: do not apply ``line_punct_thr`` when no line ends in punctuation.
        stop_chars: the line-ending characters counted; default: Unicode sentence terminals.
        short_line_thr: remove when more lines are at most ``short_line_length`` characters (``short_line_ratio``).
        short_line_length: what counts as a short line, in characters.
        char_duplicates_ratio: remove when more characters (newlines aside) are in repeated lines
            (``char_dup_ratio``).
        new_line_ratio: remove when newlines per word exceed this (``list_ratio``).
    """

    def __init__(
        self,
        *,
        line_punct_thr: Probability = 0.12,
        line_punct_exclude_zero: bool = False,
        stop_chars: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None,
        short_line_thr: Probability = 0.67,
        short_line_length: NonNegativeInt = 30,
        char_duplicates_ratio: Probability = 0.01,
        new_line_ratio: NonNegative = 0.3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.line_punct_thr = line_punct_thr
        self.line_punct_exclude_zero = line_punct_exclude_zero
        self.stop_chars = tuple(TERMINAL_PUNCTUATION if stop_chars is None else stop_chars)
        self.short_line_thr = short_line_thr
        self.short_line_length = short_line_length
        self.char_duplicates_ratio = char_duplicates_ratio
        self.new_line_ratio = new_line_ratio

    def check(self, text: str) -> str | None:
        text = text or ""
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "empty"
        ratio = sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return "line_punct_ratio"
        short = self.short_line_length
        if sum(1 for line in lines if len(line) <= short) / len(lines) > self.short_line_thr:
            return "short_line_ratio"
        n_newlines = text.count("\n")
        if find_duplicates(lines)[1] / (len(text) - n_newlines) > self.char_duplicates_ratio:
            return "char_dup_ratio"
        # every whitespace-separated chunk holds at least one word: only tokenize when that bound is not enough
        if n_newlines > self.new_line_ratio * len(text.split()) and n_newlines / len(split_words(text)) > (
            self.new_line_ratio
        ):
            return "list_ratio"
        return None


@register("length")
class Length(Filter):
    """Document length bounds in characters and whitespace-separated words.

    Args:
        min_chars: remove shorter documents (``length_too_short``); default 1 removes empty ones.
        max_chars: remove longer documents (``length_too_long``).
        min_words: remove documents with fewer words (``length_too_few_words``).
        max_words: remove documents with more words (``length_too_many_words``).
    """

    def __init__(
        self,
        *,
        min_chars: NonNegativeInt | None = 1,
        max_chars: NonNegativeInt | None = None,
        min_words: NonNegativeInt | None = None,
        max_words: NonNegativeInt | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        _check_order("length", "min_chars", min_chars, "max_chars", max_chars)
        _check_order("length", "min_words", min_words, "max_words", max_words)
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.min_words = min_words
        self.max_words = max_words

    def check(self, text: str) -> str | None:
        text = text or ""
        n = len(text)
        if self.min_chars is not None and n < self.min_chars:
            return "length_too_short"
        if self.max_chars is not None and n > self.max_chars:
            return "length_too_long"
        if self.min_words is not None or self.max_words is not None:
            n_words = len(text.split())
            if self.min_words is not None and n_words < self.min_words:
                return "length_too_few_words"
            if self.max_words is not None and n_words > self.max_words:
                return "length_too_many_words"
        return None
