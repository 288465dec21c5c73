"""WARC input: HTML responses become documents with url/date/record-id metadata; every other record a counted row."""

import codecs
import gzip
import io
from datetime import datetime, timezone

import pyarrow as pa
import pytest

pytest.importorskip("fastwarc")
warcio = pytest.importorskip("warcio")
from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from pipelines import warc  # noqa: E402
from pipelines.readers import InputDatasource, read_file  # noqa: E402
from pipelines.recipe import RecipeError, parse_recipe  # noqa: E402
from pipelines.runner import run  # noqa: E402
from storage.fs import detect_format  # noqa: E402
from storage.shards import read_shards  # noqa: E402
from tests.conftest import prose  # noqa: E402
from tests.warcs import write_response  # noqa: E402


def article(title: str, body: str, meta: str = "") -> str:
    """A small web page: navigation and a footer around an article."""
    return (
        f"<!DOCTYPE html><html><head>{meta}<title>{title}</title><script>var x = 1;</script></head><body>"
        '<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li><li><a href="/about">About us</a>'
        f"</li></ul></nav><article><h1>{title}</h1><p>{body}</p><p>{prose(7)}</p></article>"
        "<footer><p>© 2024 Example Media. All rights reserved.</p></footer></body></html>"
    )


def write_warc(path, gz=True, extra=()) -> dict[str, bytes]:
    """A WARC with every kind of record the reader tells apart; returns the HTML bodies by URL."""
    cafe = "Le café de la gare sert un thé très apprécié."
    pages = {
        "https://a.example/utf8": article("Unicode", "Grüße aus Köln, 東京 and café au lait.").encode("utf-8"),
        "https://a.example/latin1-header": article("Header", cafe).encode("latin-1"),
        "https://a.example/latin1-meta": article("Meta", cafe, '<meta charset="iso-8859-1">').encode("latin-1"),
        "https://a.example/cp1251-undeclared": article("Cyrillic", "Привет, мир! " * 40).encode("cp1251"),
    }
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=gz)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "sluice tests"}))
        req = StatusAndHeaders("GET /utf8 HTTP/1.1", [("Host", "a.example")], is_http_request=True)
        w.write_record(
            w.create_warc_record("https://a.example/utf8", "request", payload=io.BytesIO(b""), http_headers=req)
        )
        write_response(
            w,
            "https://a.example/utf8",
            pages["https://a.example/utf8"],
            [("Content-Type", "text/html; charset=UTF-8")],
            rid="<urn:uuid:00000000-0000-0000-0000-000000000001>",
        )
        write_response(
            w,
            "https://a.example/latin1-header",
            pages["https://a.example/latin1-header"],
            [("Content-Type", "text/html; charset=ISO-8859-1")],
        )
        write_response(
            w, "https://a.example/latin1-meta", pages["https://a.example/latin1-meta"], [("Content-Type", "text/html")]
        )
        write_response(
            w,
            "https://a.example/cp1251-undeclared",
            pages["https://a.example/cp1251-undeclared"],
            [("Content-Type", "text/html")],
        )
        write_response(
            w,
            "https://a.example/paper.pdf",
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj",
            [("Content-Type", "application/pdf")],
        )
        write_response(
            w,
            "https://a.example/gone",
            b"<html><body>Not found</body></html>",
            [("Content-Type", "text/html")],
            "404 Not Found",
        )
        zipped = gzip.compress(article("Zipped", "This page was sent gzip-encoded by its server.").encode())
        write_response(
            w,
            "https://a.example/zipped",
            zipped,
            [("Content-Type", "application/xhtml+xml; charset=utf-8"), ("Content-Encoding", "gzip")],
        )
        write_response(
            w,
            "https://a.example/bad-gzip",
            b"\x1f\x8b not gzip at all",
            [("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
        )
        write_response(
            w, "https://a.example/big", article("Big", "x " * 40_000).encode(), [("Content-Type", "text/html")]
        )
        for url, body, headers in extra:
            write_response(w, url, body, headers)
        meta = w.create_warc_record(
            "https://a.example/utf8",
            "metadata",
            payload=io.BytesIO(b"fetchTimeMs: 12\n"),
            warc_content_type="application/warc-fields",
        )
        w.write_record(meta)
    return pages


REASONS = {
    "https://a.example/utf8": None,
    "https://a.example/latin1-header": None,
    "https://a.example/latin1-meta": None,
    "https://a.example/cp1251-undeclared": None,
    "https://a.example/paper.pdf": "input_not_html",
    "https://a.example/gone": "input_http_status",
    "https://a.example/zipped": None,
    "https://a.example/bad-gzip": "input_bad_encoding",
    "https://a.example/big": "input_too_large",
}


def _read(text: str):
    source = InputDatasource(parse_recipe(text).inputs)
    meta = source.scan_metadata()
    blocks = [b for t in source.tasks for b in read_file(t, None, meta)]
    assert blocks and all(b.schema == meta.read_schema for b in blocks)
    return meta, pa.concat_tables(blocks)


def test_format_is_detected_from_the_file_name():
    assert detect_format("crawl/CC-MAIN-0001.warc.gz") == "warc"
    assert detect_format("x.warc") == "warc" and detect_format("x.WARC.zst") == "warc"
    assert detect_format("x.warc.jsonl") == "jsonl" and detect_format("warc.txt") == "text"


@pytest.mark.parametrize("gz", [True, False])
def test_each_record_becomes_one_row_with_its_reason_and_metadata(tmp_path, gz):
    path = tmp_path / ("c.warc.gz" if gz else "c.warc")
    write_warc(path, gz)
    text = f"inputs:\n  - {{path: {path}, domain: web, max_record_mb: 0.05}}\n"
    meta, t = _read(text)
    assert [(f.name, f.type) for f in meta.schema] == [(f.name, f.type) for f in warc.WARC_FIELDS]
    rows = t.to_pylist()
    assert len(rows) == 1 + 1 + len(REASONS) + 1  # warcinfo, request, the responses, metadata
    others = [r for r in rows if r["reason"] == "input_not_response"]
    assert sorted(r["error"] for r in others) == ["WARC-Type: metadata", "WARC-Type: request", "WARC-Type: warcinfo"]
    responses = {r["url"]: r for r in rows if r["reason"] != "input_not_response"}
    assert {u: r["reason"] for u, r in responses.items()} == REASONS
    assert all(r["stage"] == "input" for r in rows if r["reason"])
    assert all(r["text"] is None for r in rows if r["reason"])
    assert [r["raw"] for r in rows if r["raw"] is not None] == [b"\x1f\x8b not gzip at all"]  # malformed: kept

    first = responses["https://a.example/utf8"]
    assert first["id"] == first["warc_record_id"] == "<urn:uuid:00000000-0000-0000-0000-000000000001>"
    assert first["date"] == datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    assert (first["content_type"], first["charset"]) == ("text/html", "utf-8")
    assert "Grüße aus Köln, 東京" in first["text"] and first["text"].startswith("<!DOCTYPE html>")
    for url in ("https://a.example/latin1-header", "https://a.example/latin1-meta"):
        assert "Le café de la gare sert un thé très apprécié." in responses[url]["text"]
        assert responses[url]["charset"] == "cp1252"  # iso-8859-1 means windows-1252 on the web
    cyr = responses["https://a.example/cp1251-undeclared"]
    assert "Привет, мир!" in cyr["text"] and cyr["charset"] == "cp1251"  # detected
    zipped = responses["https://a.example/zipped"]
    assert "sent gzip-encoded" in zipped["text"] and zipped["content_type"] == "application/xhtml+xml"
    pdf = responses["https://a.example/paper.pdf"]
    assert (pdf["content_type"], pdf["error"]) == ("application/pdf", "content type application/pdf")
    assert responses["https://a.example/gone"]["error"] == "HTTP status 404"
    assert "over the input's limit" in responses["https://a.example/big"]["error"]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(i.startswith("<urn:uuid:") for i in ids)


def test_a_truncated_warc_keeps_the_records_read_and_records_the_break(tmp_path):
    pages = [
        (f"https://b.example/{i}", article(f"P{i}", prose(i)).encode(), [("Content-Type", "text/html")])
        for i in range(300)
    ]
    path = tmp_path / "full.warc.gz"
    write_warc(path, extra=pages)
    data = path.read_bytes()
    for name, cut in (
        ("cut.warc.gz", data[: len(data) // 2]),
        ("cut.warc", gzip.decompress(data)[: len(gzip.decompress(data)) // 2]),
    ):
        (tmp_path / name).write_bytes(cut)
        _, t = _read(f"inputs:\n  - {{path: {tmp_path / name}, domain: web}}\n")
        reasons = t.column("reason").to_pylist()
        assert reasons[-1] == "input_truncated" and reasons.count("input_truncated") == 1, name
        n = len(reasons) - 1
        assert 100 < n < 300 and reasons.count(None) > 90
        assert (
            t.column("error")
            .to_pylist()[-1]
            .startswith(f"read stopped after {n} records; the rest of the file is lost")
        )
    (tmp_path / "junk.warc").write_bytes(b"this is not a WARC file\r\n\r\n")
    _, t = _read(f"inputs:\n  - {{path: {tmp_path / 'junk.warc'}, domain: web}}\n")
    assert t.column("reason").to_pylist() == ["input_unreadable"]


def test_charset_order_bom_utf8_header_meta_detection_then_replacement(monkeypatch):
    ru = "<html><head><meta charset='koi8-r'></head><body>Привет, как дела?</body></html>"
    assert warc.decode_html(ru.encode("koi8-r"), None)[1] == "koi8-r"  # the meta tag
    assert warc.decode_html(ru.encode("koi8-r"), "windows-1251")[1] == "cp1251"  # the header before the meta tag
    fr = "<html><body>Ça coûte 5 €</body></html>"
    assert warc.decode_html(fr.encode("utf-8"), "us-ascii") == (fr, "utf-8", 0.0)  # valid UTF-8 is UTF-8
    assert warc.decode_html(fr.encode("cp1252"), "us-ascii") == (fr, "cp1252", 0.0)  # ascii means windows-1252
    assert warc.decode_html(codecs.BOM_UTF16_LE + fr.encode("utf-16-le"), "iso-8859-1")[:2] == (fr, "utf-16")
    assert warc.codec("ISO-8859-1") == warc.codec("latin1") == "cp1252" and warc.codec("no-such-charset") is None
    monkeypatch.setattr(warc, "_detect", lambda body: None)
    text, used, bad = warc.decode_html(b"<p>" + bytes(range(0x80, 0x100)) * 4 + b"</p>", "utf-8")
    assert used == "utf-8" and bad > warc.MAX_REPLACED and "\ufffd" in text


def test_warc_fields_options_are_checked_against_the_warc_fields(tmp_path):
    path = tmp_path / "c.warc.gz"
    write_warc(path)
    with pytest.raises(RecipeError, match="`format: warc` inputs have the fields url, date"):
        parse_recipe(f"inputs:\n  - {{path: {path}, domain: web, format: warc, fields: [url, title]}}\n")
    meta, t = _read(f"inputs:\n  - {{path: {path}, domain: web, drop_fields: [charset], rename: {{url: page_url}}}}\n")
    assert meta.schema.names == ["page_url", "date", "warc_record_id", "content_type"]
    assert "https://a.example/utf8" in t.column("page_url").to_pylist()
    _, hashed = _read(f"inputs:\n  - {{path: {path}, domain: web, id_field: null}}\n")
    ids = hashed.column("id").to_pylist()
    assert len(set(ids)) == len(ids) and not any(i.startswith("<urn:") for i in ids)
    assert hashed.column("warc_record_id").null_count == 0  # the record id is still kept as metadata


def test_a_crawl_runs_through_extract_into_shards_with_its_url(tmp_path, ray_session):
    path = tmp_path / "in" / "crawl.warc.gz"
    path.parent.mkdir()
    write_warc(path)
    text = (
        f"inputs:\n  - {{path: {path}, domain: web, max_record_mb: 0.05}}\n"
        f"stages:\n  - {{op: extract, keep_html: true}}\n  - {{op: normalize}}\n"
        f"output: {{dir: {tmp_path}/out, shard_mb: 0.002}}\n"
    )
    m = run(parse_recipe(text), recipe_text=text)
    assert m["conservation"]["ok"] and m["conservation"]["read"] == 3 + len(REASONS)
    read = m["stages"][0]
    assert read["removed"] == {
        "input_not_response": 3,
        "input_not_html": 1,
        "input_http_status": 1,
        "input_too_large": 1,
        "input_bad_encoding": 1,
    }
    kept = read_shards(str(tmp_path / "out" / "shards")).to_pylist()
    assert sorted(r["url"] for r in kept) == sorted(u for u, why in REASONS.items() if why is None)
    for r in kept:
        assert "<" not in r["text"] and "Home" not in r["text"].split("\n")  # main text, not markup or menu
        assert r["html"].lstrip().startswith("<!DOCTYPE html>") and r["date"].year == 2024
    by_url = {r["url"]: r for r in kept}
    assert "Le café de la gare" in by_url["https://a.example/latin1-meta"]["text"]
    removed = read_shards(str(tmp_path / "out" / "removed")).to_pylist()
    assert {r["url"] for r in removed if r["reason"] == "input_not_html"} == {"https://a.example/paper.pdf"}
