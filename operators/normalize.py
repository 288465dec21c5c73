"""Text normalization: Unicode NFC, control characters, line endings and whitespace."""

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


@register("normalize")
class Normalize(Operator):
    """Rewrite ``text`` into a canonical form; a document left empty is removed (``normalize_empty``).

    Steps, in order (each can be switched off): Unicode NFC; line endings ``\\r\\n`` and ``\\r`` (and the
    Unicode line/paragraph separators) become ``\\n``; control characters other than ``\\t`` and ``\\n`` are
    deleted; trailing whitespace is stripped from every line; runs of spaces, tabs and other horizontal
    whitespace become one space; three or more newlines (two or more blank lines) become two; the document is
    stripped. Removed documents keep their original text.

    Args:
        nfc: apply Unicode NFC composition.
        normalize_newlines: turn ``\\r\\n``, ``\\r``, U+2028 and U+2029 into ``\\n``.
        remove_control: delete control characters except tab and newline.
        strip_lines: strip trailing whitespace from every line.
        collapse_spaces: collapse runs of horizontal whitespace within a line to one space.
        collapse_blank_lines: collapse runs of blank lines to one blank line.
        strip: strip leading and trailing whitespace from the document.
    """

    def __init__(
        self,
        *,
        nfc: StrictBool = True,
        normalize_newlines: StrictBool = True,
        remove_control: StrictBool = True,
        strip_lines: StrictBool = True,
        collapse_spaces: StrictBool = True,
        collapse_blank_lines: StrictBool = True,
        strip: StrictBool = True,
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

    def normalize(self, text: str) -> str:
        """The normalized form of ``text``."""
        if self.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if self.normalize_newlines:
            text = _LINE_BREAK_RE.sub("\n", text)
        if self.remove_control:
            text = _CONTROL_RE.sub("", text)
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
        empty: list[int] = []
        changed = False
        for i in np.flatnonzero(active).tolist():
            old = texts[i] or ""
            new = self.normalize(old)
            if not new:
                empty.append(i)
            elif new != texts[i]:
                texts[i] = new
                changed = True
        if changed:
            batch = with_column(batch, "text", pa.array(texts, pa.string()))
        if empty:
            batch = mark_removed(batch, np.asarray(empty), ["normalize_empty"] * len(empty), self.stage)
        return batch
