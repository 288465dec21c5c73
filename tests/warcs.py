"""Writing WARC files in tests with warcio (import it only after ``pytest.importorskip("warcio")``)."""

from __future__ import annotations

import io

from warcio.statusandheaders import StatusAndHeaders

#: the WARC-Date every record written here carries
DATE = "2024-05-01T12:30:00Z"


def write_response(w, url: str, body: bytes, headers, status: str = "200 OK", rid: str | None = None) -> None:
    """Write one HTTP ``response`` record for ``url`` with ``body`` and HTTP ``headers`` to the WARCWriter ``w``;
    ``rid`` fixes its WARC-Record-ID (``<urn:uuid:…>``), which a WARC input uses as the document id."""
    http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
    rec = w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
    rec.rec_headers.replace_header("WARC-Date", DATE)
    if rid:
        rec.rec_headers.replace_header("WARC-Record-ID", rid)
    w.write_record(rec)
