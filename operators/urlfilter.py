"""URL filtering: remove documents whose ``url`` is on a block list of domains, URL substrings or words."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa

from operators.base import DataMismatch, ExistingFile, Operator, mark_removed, register
from storage.schema import ERROR, metadata_columns, with_column

#: URL words are the runs of letters and digits (any script), lower-cased
_SEPARATORS = re.compile(r"[\W_]+")
#: substring entries are indexed by a prefix of at most this many characters
_ANCHOR = 8
LISTS = ("block_domains", "block_urls", "block_words")


def read_list(path: str) -> list[tuple[int, str]]:
    """(line number, entry) of a block-list file: one entry a line; blank lines and lines starting with ``#``
    are skipped (a ``#`` later in a line belongs to the entry: URLs have fragments)."""
    out = []
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            entry = line.strip()
            if entry and not entry.startswith("#"):
                out.append((n, entry))
    return out


def _idna(host: str) -> str:
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def host_of(url: str) -> str | None:
    """The host of ``url``, lower-cased, without port, user or trailing dot, IDNs as punycode; None if it has none.
    A URL without a scheme (``example.com/a``) is read as a host and path."""
    s = url.strip()
    try:
        parts = urlsplit(s if "://" in s[:24] else "//" + s)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    host = host.rstrip(".") if host else ""
    return _idna(host) if host and not any(c.isspace() for c in host) else None


def domain_entry(entry: str) -> str:
    """A block-list domain as it is matched: ``*.Example.com.``, ``.example.com``, ``https://example.com/x`` and
    ``example.com`` are all ``example.com``."""
    e = entry.strip().lower().lstrip("*").lstrip(".")
    if "://" in e or "/" in e or ":" in e:
        e = host_of(e) or ""
    return _idna(e.rstrip("."))


def words_of(text: str) -> list[str]:
    return [w for w in _SEPARATORS.split(text.lower()) if w]


class _Substrings:
    """Which of many strings occurs in a text, by prefix lookups at every position (a poor man's Aho-Corasick:
    the cost per text is its length times the number of distinct prefix lengths, ≤ ``_ANCHOR``)."""

    def __init__(self, entries: list[str]) -> None:
        self.by_len: dict[int, dict[str, list[str]]] = {}
        for e in entries:
            p = min(len(e), _ANCHOR)
            self.by_len.setdefault(p, {}).setdefault(e[:p], []).append(e)

    def find(self, text: str) -> str | None:
        for p, table in self.by_len.items():
            for i in range(len(text) - p + 1):
                for e in table.get(text[i : i + p], ()):
                    if text.startswith(e, i):
                        return e
        return None


@register("url_filter")
class URLFilter(Operator):
    """Remove documents whose URL is on a block list (datatrove's ``URLFilter`` semantics, lists from files).

    - ``block_domains``: the URL's host or any parent domain is listed, so ``example.com`` blocks
      ``www.example.com`` and ``a.b.example.com`` but not ``badexample.com``; an IP address host only by itself.
      Hosts and entries are compared lower-cased, without port or trailing dot, IDNs as punycode
      (reason ``url_blocked_domain``).
    - ``block_urls``: a listed string occurs in the URL, case-insensitively, as written or percent-decoded
      (``url_blocked_url``).
    - ``block_words``: a listed word is one of the URL's words — the URL, percent-decoded and lower-cased, split on
      everything but letters and digits — so ``sex`` blocks ``/sex-shop`` and ``sex.example`` but not ``essex.com``.
      An entry of several words (``free-porn``) matches those words in a row (``url_blocked_word``).

    The lists are checked in that order; the first match is the reason and the removed row's ``error`` column says
    which entry matched (``block_domains: example.com``). Files hold one entry a line; blank lines and lines starting
    with ``#`` are skipped. They are read once per worker process (again only if a file changes) and are part of the
    resume fingerprint, so editing a list re-runs the stage. Rows with no URL (null or empty) are kept and counted
    (``report.url_filter.no_url``). Data without the ``url_field`` column (or with a non-string one) stops the run
    with a message naming it (:class:`~operators.base.DataMismatch`: a configuration mistake is not quarantined).
    Unlike datatrove, no list ships built in, and words are matched on lower-cased, percent-decoded URLs.

    Args:
        block_domains: file of blocked domains.
        block_urls: file of blocked URL substrings.
        block_words: file of blocked words.
        url_field: the column that holds the URL (an input field; ``rename:`` one to it if it is called otherwise).
    """

    metrics_key: ClassVar[str] = "url_filter"

    def __init__(
        self,
        *,
        block_domains: ExistingFile | None = None,
        block_urls: ExistingFile | None = None,
        block_words: ExistingFile | None = None,
        url_field: str = "url",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.files = {k: v for k, v in zip(LISTS, (block_domains, block_urls, block_words)) if v is not None}
        if not self.files:
            raise ValueError("url_filter: give at least one of `block_domains`, `block_urls`, `block_words` (files)")
        self.url_field = url_field
        self._load()
        self._metrics = {"checked": 0, "no_url": 0}

    def _load(self) -> None:
        self.stamps = {k: _stamp(p) for k, p in self.files.items()}
        lists = {k: read_list(p) for k, p in self.files.items()}
        self.hosts: set[str] = set()
        for n, e in lists.get("block_domains", []):
            d = domain_entry(e)
            if not d or any(c.isspace() for c in d):
                raise ValueError(f"url_filter: {self.files['block_domains']}:{n}: {e!r} is not a domain")
            self.hosts.add(d)
        self.substrings = _Substrings([e.lower() for _, e in lists.get("block_urls", [])])
        self.words: set[str] = set()
        self.phrases: dict[str, list[tuple[str, ...]]] = {}  # first word -> entries of several words
        for n, e in lists.get("block_words", []):
            ws = tuple(words_of(e))
            if not ws:
                raise ValueError(f"url_filter: {self.files['block_words']}:{n}: {e!r} has no letters or digits")
            if len(ws) == 1:
                self.words.add(ws[0])
            else:
                self.phrases.setdefault(ws[0], []).append(ws)

    def match(self, url: str) -> tuple[str, str] | None:
        """(reason, detail) for a blocked URL, else None."""
        if self.hosts and (host := host_of(url)):
            try:
                ipaddress.ip_address(host.strip("[]"))
                candidates = [host]
            except ValueError:
                labels = host.split(".")
                candidates = [".".join(labels[k:]) for k in range(len(labels))]
            for d in candidates:
                if d in self.hosts:
                    return "url_blocked_domain", f"block_domains: {d}"
        low = url.lower()
        decoded = unquote(url).lower() if "%" in url else low
        if self.substrings.by_len:
            hit = self.substrings.find(low) or (self.substrings.find(decoded) if decoded != low else None)
            if hit is not None:
                return "url_blocked_url", f"block_urls: {hit}"
        if self.words or self.phrases:
            ws = words_of(decoded)
            for j, w in enumerate(ws):
                if w in self.words:
                    return "url_blocked_word", f"block_words: {w}"
                for phrase in self.phrases.get(w, ()):
                    if tuple(ws[j : j + len(phrase)]) == phrase:
                        return "url_blocked_word", f"block_words: {' '.join(phrase)}"
        return None

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        if self.url_field not in batch.column_names:
            have = ", ".join(metadata_columns(batch.column_names)) or "none"
            raise DataMismatch(
                f"url_filter: the data has no {self.url_field!r} column (its input fields: {have}); set `url_field:` "
                f"to the field that holds the URL, or `rename:` that input field to {self.url_field!r}"
            )
        col = batch.column(self.url_field)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DataMismatch(f"url_filter: column {self.url_field!r} holds {col.type}, not URL strings")
        if any(_stamp(p) != self.stamps[k] for k, p in self.files.items()):
            self._load()  # a list changed since this worker read it (a long-lived worker serves many runs)
        idx = np.flatnonzero(active)
        urls = col.take(pa.array(idx)).to_pylist()
        rows, reasons, details = [], [], []
        for i, url in zip(idx.tolist(), urls):
            if not url or not url.strip():
                self._metrics["no_url"] += 1
                continue
            self._metrics["checked"] += 1
            if hit := self.match(url):
                rows.append(i)
                reasons.append(hit[0])
                details.append(hit[1])
        if not rows:
            return batch
        batch = mark_removed(batch, np.asarray(rows), reasons, self.stage)
        error = batch.column(ERROR).to_pylist()
        for i, d in zip(rows, details):
            error[i] = d
        return with_column(batch, ERROR, pa.array(error, pa.string()))

    def drain_metrics(self) -> dict[str, Any]:
        out, self._metrics = self._metrics, {"checked": 0, "no_url": 0}
        return out if any(out.values()) else {}


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(os.path.expanduser(path))
    return st.st_size, st.st_mtime_ns
