"""Text normalization: Unicode NFC, control characters and line endings; whitespace only on request."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pyarrow as pa
from pydantic import StrictBool

from operators.base import Operator, mark_removed, register
from storage.schema import with_column

# C0 and C1 control characters except tab and newline (carriage returns are handled as line endings first)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAK_RE = re.compile(r"\r\n?|[\u2028\u2029]")
# a run of horizontal whitespace that is not already a single space
_SPACE_RUN_RE = re.compile(r" ?(?:[^\S\n ]| {2})[^\S\n]*")
_TRAILING_SPACE_RE = re.compile(r"[^\S\n]+(?=\n|\Z)")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


#: file endings of sources whose whitespace is part of their meaning (never collapsed)
CODE_SUFFIXES = (
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts", ".go", ".rs", ".rb", ".sh", ".yaml",
    ".yml", ".toml", ".json", ".md", ".rst", ".tex", ".sql", ".scala", ".kt", ".swift", ".php", ".pl", ".lua", ".r",
    ".mk", "makefile", ".cfg", ".ini",
)  # fmt: skip


@register("normalize")
class Normalize(Operator):
    """Rewrite ``text`` into a canonical form; a document left empty is removed (``normalize_empty``).

    By default only what no model should learn changes: Unicode NFC; line endings ``\r\n`` and
    ``\r`` (and the Unicode line/paragraph separators) become ``\n``; control characters other
    than ``\t`` and ``\n`` are deleted. Whitespace — indentation, tabs, alignment, trailing
    spaces, blank lines — is kept, so code stays the same program and tables stay aligned
    (normalization for *matching*, as exact and MinHash dedup do, is separate and never stored).
    On request (each switch defaults to off): strip trailing whitespace from every line, collapse
    runs of spaces and tabs to one space, collapse two or more blank lines to one, strip the
    document. Those whitespace rewrites never touch documents of ``keep_whitespace_domains`` or
    whose source file is code or markup (:data:`CODE_SUFFIXES`). A document that is only
    whitespace is removed either way. Removed documents keep their original text.

    Args:
        nfc: apply Unicode NFC composition.
        normalize_newlines: turn ``\r\n``, ``\r``, U+2028 and U+2029 into ``\n``.
        remove_control: delete control characters except tab and newline.
        strip_lines: strip trailing whitespace from every line.
        collapse_spaces: collapse runs of horizontal whitespace within a line to one space.
        collapse_blank_lines: collapse runs of blank lines to one blank line.
        strip: strip leading and trailing whitespace from the document.
        keep_whitespace_domains: domains whose whitespace the four switches above never change.
    """

    def __init__(
        self,
        *,
        nfc: StrictBool = True,
        normalize_newlines: StrictBool = True,
        remove_control: StrictBool = True,
        strip_lines: StrictBool = False,
        collapse_spaces: StrictBool = False,
        collapse_blank_lines: StrictBool = False,
        strip: StrictBool = False,
        keep_whitespace_domains: tuple[str, ...] = ("code",),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.nfc = nfc
        self.normalize_newlines = normalize_newlines
        self.remove_control = remove_control
        self.strip_lines = strip_lines
        self.collapse_spaces = collapse_spaces
        self.collapse_blank_lines = collapse_blank_lines
        self.strip = strip
        self.keep_whitespace_domains = frozenset(keep_whitespace_domains)
        self.rewrites_whitespace = strip_lines or collapse_spaces or collapse_blank_lines or strip

    def keeps_whitespace(self, domain: str | None, source: str | None) -> bool:
        """Whether a document's whitespace is left as it is even where the recipe asks to rewrite it."""
        return domain in self.keep_whitespace_domains or (source or "").lower().endswith(CODE_SUFFIXES)

    def normalize(self, text: str, whitespace: bool = True) -> str:
        """The normalized form of ``text``; ``whitespace=False`` leaves its whitespace alone."""
        if self.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if self.normalize_newlines:
            text = _LINE_BREAK_RE.sub("\n", text)
        if self.remove_control:
            text = _CONTROL_RE.sub("", text)
        if not whitespace:
            return text
        if self.strip_lines:
            text = _TRAILING_SPACE_RE.sub("", text)
        if self.collapse_spaces:
            text = _SPACE_RUN_RE.sub(" ", text)
        if self.collapse_blank_lines:
            text = _BLANK_LINES_RE.sub("\n\n", text)
        if self.strip:
            text = text.strip()
        return text

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        texts = batch.column("text").to_pylist()
        domains = batch.column("domain").to_pylist()
        sources = batch.column("source").to_pylist() if self.rewrites_whitespace else [None] * len(texts)
        empty: list[int] = []
        changed = False
        for i in np.flatnonzero(active).tolist():
            old = texts[i] or ""
            new = self.normalize(old, not self.keeps_whitespace(domains[i], sources[i]))
            if not new.strip():
                empty.append(i)
            elif new != texts[i]:
                texts[i] = new
                changed = True
        if changed:
            batch = with_column(batch, "text", pa.array(texts, pa.string()))
        if empty:
            batch = mark_removed(batch, np.asarray(empty), ["normalize_empty"] * len(empty), self.stage)
        return batch
