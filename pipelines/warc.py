"""WARC input (``format: warc``): one row per record, HTML responses as documents, the rest removed rows.

Files: ``.warc``, ``.warc.gz`` (one gzip member per record, as crawlers write them, or one for
the whole file), ``.warc.zst`` (``format: auto`` detects all three).

Reading: the file is opened like every input, through pyarrow's filesystem layer, which
decompresses it (so ``s3://``… URIs work, and a truncated ``.warc.gz`` raises instead of ending
quietly), and FastWARC parses the records (it measured faster than warcio on the same file,
BENCHMARKS.md "Crawl input"). Every WARC record becomes exactly one row:

- ``response`` records with HTTP status 2xx whose content type is HTML (``text/html``,
  ``application/xhtml+xml``; the HTTP ``Content-Type``, else Common Crawl's
  ``WARC-Identified-Payload-Type``, else a ``<html``/``<!doctype html`` at the start of the body)
  are documents: ``text`` is the decoded HTML (run the ``extract`` stage to get the main text),
  ``id`` the ``WARC-Record-ID`` (``<urn:uuid:…>``, as FineWeb keeps it; a hash of file and record
  number with ``id_field: null`` or when the record has none). A body the crawler cut short
  (``WARC-Truncated``; Common Crawl cuts at 1 MiB) is kept as it is: extractors read partial HTML.
- other responses are removed rows: ``input_not_html`` (another content type), ``input_http_status``
  (not 2xx: redirects, errors), ``input_too_large`` (a body over the input's ``max_record_mb``;
  the body is skipped without being read into memory), ``input_bad_encoding`` (a
  ``Content-Encoding``/``Transfer-Encoding`` that fails to decode or is not gzip, deflate, br,
  zstd or chunked), ``input_bad_charset`` (over 1% of the decoded characters are U+FFFD, see below),
  ``input_empty_text`` (an empty or blank body).
- every other record (``request``, ``metadata``, ``warcinfo``, ``revisit``, ``resource``…) is a
  removed row ``input_not_response`` with the record type in ``error``: they are not documents,
  and counting them as rows keeps "rows read = kept + removed" true per record, puts their count
  per reason in the manifest's input stage and lets ``sluice inspect`` list them. They are small
  (no raw bytes are kept): a Common Crawl file has two of them per page.

Rows removed as malformed keep the body as received in ``raw`` (``input_bad_encoding``) or as
decoded from its transfer/content encoding (``input_bad_charset``), at most ``max_record_mb``;
the others carry no ``raw`` bytes (they are not malformed, only not documents: URL, type and
``error`` say what they were).

Metadata columns, fixed without scanning (:data:`WARC_FIELDS`, subject to the input's ``fields``,
``drop_fields`` and ``rename``): ``url`` (``WARC-Target-URI``), ``date`` (``WARC-Date`` as a UTC
timestamp, so SQL can compare and bucket it; null when the header is missing or unparsable),
``warc_record_id``, ``content_type`` (the payload's media type, lower-cased, without parameters;
null for non-response records) and ``charset`` (the Python codec the HTML was decoded with).

Charset: a byte-order mark wins. Then UTF-8, when the body decodes as UTF-8 without error: UTF-8
pages declared as something else are common on the web, while legacy-encoded text that happens
to be valid UTF-8 needs byte pairs such as ``Ã©`` that prose almost never has (and for pure ASCII
every label gives the same text). Then the HTTP header's ``charset``, then the first
``<meta charset>`` / ``http-equiv`` declaration in the first 4 KB, each if the body decodes with it
without error (labels mapped as browsers map them: ``iso-8859-1``, ``latin1`` and ``ascii`` mean
``cp1252``); then resiliparse's detector. A body that decodes cleanly with none of them is decoded
with the first declared charset (else the detected one, else UTF-8), undecodable bytes replaced by
U+FFFD; if more than 1% of its characters are replacements the row is removed as
``input_bad_charset``.

Truncation: a compressed file that ends early raises in pyarrow's decompressor; an uncompressed
one ends inside its last record, which is noticed as a body shorter than its ``Content-Length``.
Either way the rows read so far are kept and :func:`pipelines.readers.read_file` adds one
``input_truncated`` row. Anything FastWARC cannot parse (``Invalid WARC header``) is handled the
same way (``input_unreadable`` when nothing was read).
"""

from __future__ import annotations

import codecs
import io
import re
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone

import pyarrow as pa

from storage.schema import make_id

#: the metadata columns a WARC input writes, with their types
WARC_FIELDS = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("date", pa.timestamp("us", tz="UTC")),
        pa.field("warc_record_id", pa.string()),
        pa.field("content_type", pa.string()),
        pa.field("charset", pa.string()),
    ]
)
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: flush a block once its HTML reaches this many bytes (pages are far larger than JSONL records)
BLOCK_BYTES = 32 << 20
#: a decoded page with more than this share of U+FFFD is input_bad_charset
MAX_REPLACED = 0.01

_META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_HTML_START = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head)\b", re.I | re.S)
#: WHATWG's label mappings for the labels whose Python codec differs from what browsers decode
_HTML5_LABELS = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "ascii": "cp1252",
    "us-ascii": "cp1252",
    "iso-8859-9": "cp1254",
    "latin5": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class RecordError(EOFError):
    """The file ends inside a record (read_file turns it into ``input_truncated``)."""


def codec(label: str | None) -> str | None:
    """The Python codec for a charset label as browsers read it, or None for an unknown label."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    name = _HTML5_LABELS.get(label, label)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(body: bytes, header_charset: str | None) -> tuple[str, str, float]:
    """(text, codec, share of U+FFFD introduced) of an HTML body; the order is the module's docstring's."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body.decode(name, errors="replace"), name, 0.0
    head = body[:4096]
    meta = _META_CHARSET.search(head)
    candidates = [codec(header_charset), codec(meta.group(1).decode("ascii", "replace") if meta else None)]
    tried: list[str] = []
    for name in ["utf-8", *candidates]:
        if name is None or name in tried:
            continue
        tried.append(name)
        try:
            return body.decode(name), name, 0.0
        except (UnicodeDecodeError, LookupError):
            continue
    detected = _detect(body)
    if detected is not None and detected not in tried:
        try:
            return body.decode(detected), detected, 0.0
        except (UnicodeDecodeError, LookupError):
            pass
    name = next((c for c in (*candidates, detected) if c is not None), "utf-8")
    text = body.decode(name, errors="replace")
    bad = text.count("\ufffd") / max(1, len(text))
    return text, name, bad


def _detect(body: bytes) -> str | None:
    try:
        from resiliparse.parse.encoding import detect_encoding
    except ImportError:
        return "cp1252"
    return codec(detect_encoding(body, max_len=64 << 10, html5_compatible=True))


def decode_body(raw: bytes, transfer: str | None, encoding: str | None, limit: int) -> bytes:
    """The HTTP body without its transfer and content encodings, at most ``limit + 1`` bytes (so a
    compressed body cannot expand past the bound). Raises ValueError for an unknown encoding."""
    from fastwarc.stream_io import BrotliReader, ChunkedReader, GzipReader, ZstdReader

    if transfer and "chunked" in transfer.lower():
        raw = ChunkedReader(io.BytesIO(raw)).read(len(raw))
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return raw
    if enc in ("gzip", "x-gzip"):
        return GzipReader(io.BytesIO(raw)).read(limit + 1)
    if enc == "deflate":  # zlib-wrapped as the RFC says, or raw deflate as some servers send
        for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
            try:
                return zlib.decompressobj(wbits).decompress(raw, limit + 1)
            except zlib.error:
                continue
        raise ValueError("Content-Encoding deflate: not zlib or raw deflate data")
    if enc == "br":
        return BrotliReader(io.BytesIO(raw)).read(limit + 1)
    if enc == "zstd":
        return ZstdReader(io.BytesIO(raw)).read(limit + 1)
    raise ValueError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate, br, zstd)")


def warc_date(value: str | None) -> datetime | None:
    """``WARC-Date`` (ISO 8601, UTC) as an aware datetime, or None."""
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


def media_type(content_type: str | None) -> str | None:
    """``text/html`` of ``Text/HTML; charset=UTF-8``; None for a missing or empty header."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


class _Counted:
    """A pyarrow input stream as the file object FastWARC reads (it asks for ``tell``, which a
    decompressing pyarrow stream cannot answer)."""

    def __init__(self, f) -> None:
        self.f, self.pos = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read() if n is None or n < 0 else self.f.read(n)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos


def read_warc(task, fs, meta=None) -> Iterator[pa.Table]:
    """Rows of one WARC file (see the module docstring), in blocks; ``task`` is a FileTask."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from pipelines.readers import _kept, _Rows

    rows = _Rows(task, task.uri, meta)
    cache: dict[str, str | None] = {}
    limit = task.max_record_bytes
    size = 0

    def add(n: int, rid: str | None, fields: dict, text=None, reason=None, error=None, raw=None) -> None:
        record = _kept(fields, task.fields, cache, True) if rows.meta is not None else None
        if task.id_field is None:
            rid = None
        rows.add(n, rid if rid else make_id(task.uri, n), text, reason, raw, error, record)

    try:
        with fs.open_input_stream(task.path, compression="detect") as f:
            for n, rec in enumerate(ArchiveIterator(_Counted(f), parse_http=True, auto_decode="none")):
                h = rec.headers
                rid = h.get("WARC-Record-ID")
                url, date = h.get("WARC-Target-URI"), warc_date(h.get("WARC-Date"))
                fields = {"url": url, "date": date, "warc_record_id": rid}
                if rec.record_type != WarcRecordType.response:
                    _skip(rec, fields)
                    kind = h.get("WARC-Type") or str(rec.record_type)
                    add(n, rid, fields, reason="input_not_response", error=f"WARC-Type: {kind}")
                else:
                    text, reason, error, raw = _response(rec, fields, limit)
                    add(n, rid, fields, text, reason, error, raw)
                    size += len(text or "") + len(raw or b"")
                if rows.full() or size >= BLOCK_BYTES:
                    yield rows.flush()
                    size = 0
    except (OSError, ValueError, EOFError):
        yield rows.flush()  # keep what was read before the file broke; read_file records how
        raise
    yield rows.flush()


def _skip(rec, fields: dict) -> None:
    """Read past a record's body without keeping it; raise RecordError when the file ends inside it."""
    length = rec.content_length
    got = rec.reader.consume()
    if got < length:
        raise RecordError(f"record {fields['warc_record_id']} ends after {got:,} of its {length:,} body bytes")


def _response(rec, fields: dict, limit: int) -> tuple[str | None, str | None, str | None, bytes | None]:
    """(text, reason, error, raw bytes) of a response record; fills ``fields``' content_type and charset."""
    http = rec.http_headers if rec.is_http else None
    ctype = media_type(http.get("Content-Type") if http is not None else None)
    ctype = ctype or media_type(rec.headers.get("WARC-Identified-Payload-Type"))
    fields["content_type"] = ctype
    status = http.status_code if http is not None else None
    if status is not None and not 200 <= status < 300:
        _skip(rec, fields)
        return None, "input_http_status", f"HTTP status {status}", None
    if ctype is not None and ctype not in HTML_TYPES:
        _skip(rec, fields)
        return None, "input_not_html", f"content type {ctype}", None
    length = rec.content_length
    if length > limit:
        _skip(rec, fields)
        return None, "input_too_large", f"body of {length:,} bytes is over the input's limit of {limit:,}", None
    raw = rec.reader.read(length)
    if len(raw) < length:
        raise RecordError(f"record {fields['warc_record_id']} ends after {len(raw):,} of its {length:,} body bytes")
    if ctype is None:  # no declared type: an HTML start tag decides
        if not _HTML_START.match(raw[:1024]):
            return None, "input_not_html", "content type missing and the body does not start like HTML", None
        ctype = fields["content_type"] = "text/html"
    try:
        te, ce = (http.get("Transfer-Encoding"), http.get("Content-Encoding")) if http is not None else (None, None)
        body = decode_body(raw, te, ce, limit)
    except (OSError, ValueError) as e:
        return None, "input_bad_encoding", f"{type(e).__name__}: {e}", raw
    if len(body) > limit:
        return None, "input_too_large", f"decoded body is over the input's limit of {limit:,} bytes", None
    charset = None
    if http is not None:
        m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", http.get("Content-Type") or "", re.I)
        charset = m.group(1) if m else None
    text, used, bad = decode_html(body, charset)
    fields["charset"] = used
    if bad > MAX_REPLACED:
        return None, "input_bad_charset", f"{bad:.1%} of the characters are undecodable as {used}", body
    if not text.strip():
        return None, "input_empty_text", None, None
    return text, None, None, None
