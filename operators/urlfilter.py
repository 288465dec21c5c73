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


#: a block-list domain that needs no normalizing beyond lower-casing (most of a real list)
_PLAIN_DOMAIN = r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$"
_HASH_SEED = 0x5EED


def _hash(strings: list[str] | pa.Array) -> np.ndarray:
    """64-bit hashes of strings, vectorized (polars; stable within one process, which is all a lookup needs)."""
    import polars as pl

    return pl.Series(values=strings, dtype=pl.String).hash(seed=_HASH_SEED).to_numpy()


def _read_column(path: str) -> pa.Array:
    """A list file's lines, trimmed and lower-cased, without blank and ``#`` lines, as one Arrow string array
    (read by Arrow, a block at a time: a list of millions of domains is never millions of Python strings)."""
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    parts = []
    try:
        with pcsv.open_csv(
            os.path.expanduser(path),
            read_options=pcsv.ReadOptions(column_names=["e"], block_size=1 << 22, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter="\x01", quote_char=False, escape_char=False),
            convert_options=pcsv.ConvertOptions(column_types={"e": pa.string()}, strings_can_be_null=False),
        ) as reader:
            for block in reader:
                col = pc.utf8_lower(pc.utf8_trim_whitespace(block.column("e")))
                parts.append(col.filter(pc.and_(pc.not_equal(col, ""), pc.invert(pc.starts_with(col, "#")))))
    except pa.ArrowInvalid as e:  # e.g. bytes that are not UTF-8
        raise ValueError(f"url_filter: {path} is not a text file of one entry a line: {e}") from None
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


class _HostSet:
    """A large set of domains in little memory: sorted 64-bit hashes beside the domains in the same order (an
    Arrow array), so a hash hit is confirmed against the listed string. FineWeb's 4.56M-domain list takes
    ~175 MB here (as a Python set: ~500 MB, and 1.4 GB while loading)."""

    def __init__(self, domains: pa.Array) -> None:
        hashes = _hash(domains)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.domains = domains.take(pa.array(order))

    def __len__(self) -> int:
        """Entries (a domain listed twice counts twice; it matches the same)."""
        return len(self.hashes)

    def first_listed(self, candidates: list[list[str]]) -> list[str | None]:
        """Per URL, the first of its candidate domains that is listed (None when none is)."""
        flat = [c for cs in candidates for c in cs]
        out: list[str | None] = [None] * len(candidates)
        if not flat or not len(self):
            return out
        h = _hash(flat)
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        hit = np.flatnonzero(self.hashes[pos] == h)
        owner = np.repeat(np.arange(len(candidates)), [len(cs) for cs in candidates])
        for k in hit.tolist():  # in candidate order: the first confirmed hit of a URL wins
            i = int(owner[k])
            if out[i] is None and self._listed(flat[k], int(pos[k])):
                out[i] = flat[k]
        return out

    def _listed(self, domain: str, pos: int) -> bool:
        """Whether ``domain`` is listed: it or another string with its hash sits at ``pos`` onwards."""
        while pos < len(self.hashes) and self.domains[pos].as_py() != domain:
            if pos + 1 >= len(self.hashes) or self.hashes[pos + 1] != self.hashes[pos]:
                return False
            pos += 1
        return pos < len(self.hashes)


def read_domains(path: str) -> _HostSet:
    """A ``block_domains`` file as a :class:`_HostSet`; entries that are not plain names (``*.x.com``,
    ``https://x.com/``, IDNs, a trailing dot) go through :func:`domain_entry`; one that is no domain is an error
    naming its line."""
    import pyarrow.compute as pc

    col = _read_column(path)
    plain = pc.match_substring_regex(col, _PLAIN_DOMAIN)
    others = []
    for e in col.filter(pc.invert(plain)).to_pylist():
        d = domain_entry(e)
        if not d or any(c.isspace() for c in d):
            n = next(n for n, line in read_list(path) if line.lower() == e)
            raise ValueError(f"url_filter: {path}:{n}: {e!r} is not a domain")
        others.append(d)
    hosts = _HostSet(pa.concat_arrays([col.filter(plain), pa.array(others, pa.string())]))
    del col, plain
    pa.default_memory_pool().release_unused()  # the reader's buffers: ~600 MB of RSS for a 4.56M-line list
    return hosts


def candidate_domains(url: str) -> list[str]:
    """The domains a URL's host is blocked by: itself and every parent (an IP address only by itself)."""
    host = host_of(url)
    if not host:
        return []
    try:
        ipaddress.ip_address(host.strip("[]"))
        return [host]
    except ValueError:
        labels = host.split(".")
        return [".".join(labels[k:]) for k in range(len(labels))]


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
        lists = {k: read_list(p) for k, p in self.files.items() if k != "block_domains"}
        self.hosts = read_domains(self.files["block_domains"]) if "block_domains" in self.files else None
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
        return self.match_many([url])[0]

    def match_many(self, urls: list[str]) -> list[tuple[str, str] | None]:
        """:meth:`match` of every URL, the domain lookups of all of them at once."""
        hosts = self.hosts.first_listed([candidate_domains(u) for u in urls]) if self.hosts else [None] * len(urls)
        return [
            ("url_blocked_domain", f"block_domains: {d}") if d else self._match_text(u) for u, d in zip(urls, hosts)
        ]

    def _match_text(self, url: str) -> tuple[str, str] | None:
        """(reason, detail) when a block_urls substring or a block_words word is in the URL."""
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
        given = [(i, url) for i, url in zip(idx.tolist(), urls) if url and url.strip()]
        self._metrics["no_url"] += len(urls) - len(given)
        self._metrics["checked"] += len(given)
        rows, reasons, details = [], [], []
        for (i, _), hit in zip(given, self.match_many([u for _, u in given])):
            if hit:
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
