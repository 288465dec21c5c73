"""Readers: every format, every malformed record quarantined with its raw bytes, nothing lost."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.readers import FileTask, read_file
from storage.fs import detect_format
from storage.schema import READ_SCHEMA


def _read(path, fmt="auto", text_field="text", id_field="id", domain="web") -> pa.Table:
    task = FileTask(str(path), str(path), domain, detect_format(str(path), fmt), text_field, id_field)
    blocks = list(read_file(task))
    assert all(b.schema == READ_SCHEMA for b in blocks)
    return pa.concat_tables([READ_SCHEMA.empty_table(), *blocks])


def test_jsonl_plain_gz_zst_read_the_same(tmp_path):
    lines = [json.dumps({"id": i, "text": f"doc {i}"}) for i in range(5)]
    body = ("\n".join(lines) + "\n").encode()
    (tmp_path / "a.jsonl").write_bytes(body)
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(body)
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    tables = [_read(tmp_path / n) for n in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst")]
    for t in tables:
        assert t.column("id").to_pylist() == ["0", "1", "2", "3", "4"]
        assert t.column("text").to_pylist() == [f"doc {i}" for i in range(5)]
        assert t.column("reason").null_count == 5


def test_malformed_records_get_input_reasons_and_raw_bytes(tmp_path):
    raw = [
        b'{"id": "ok", "text": "fine"}',
        b"{not json",
        b'{"id": "u", "text": "caf\xe9"}',
        b'{"id": "m", "body": "x"}',
        b'{"id": "n", "text": 5}',
        b'{"id": "e", "text": "  "}',
        b"[1, 2]",
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    t = _read(tmp_path / "bad.jsonl")
    assert t.column("reason").to_pylist() == [
        None,
        "input_bad_json",
        "input_bad_utf8",
        "input_missing_text",
        "input_text_not_string",
        "input_empty_text",
        "input_not_object",
    ]
    assert t.column("raw").to_pylist()[1:] == raw[1:]
    assert set(t.column("stage").to_pylist()[1:]) == {"input"}
    assert len(set(t.column("id").to_pylist())) == len(raw)  # hashed ids stay unique


def test_missing_id_field_hashes_source_and_row(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    t1 = _read(tmp_path / "a.jsonl")
    t2 = _read(tmp_path / "a.jsonl")
    assert t1.column("id").to_pylist() == t2.column("id").to_pylist()
    assert len(set(t1.column("id").to_pylist())) == 2


def test_parquet_and_text_directories(tmp_path):
    pq.write_table(pa.table({"content": ["x", None, "", "y"], "key": [1, 2, 3, 4]}), tmp_path / "p.parquet")
    t = _read(tmp_path / "p.parquet", text_field="content", id_field="key")
    assert t.column("id").to_pylist() == ["1", "2", "3", "4"]
    assert t.column("reason").to_pylist() == [None, "input_missing_text", "input_empty_text", None]
    (tmp_path / "doc.txt").write_bytes("ünïcode text".encode())
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    assert _read(tmp_path / "doc.txt", "text").column("text").to_pylist() == ["ünïcode text"]
    bad = _read(tmp_path / "bin.txt", "text")
    assert bad.column("reason").to_pylist() == ["input_bad_utf8"]
    assert bad.column("raw").to_pylist() == [b"\xff\xfe\x00"]


def test_truncated_gzip_keeps_rows_read_and_records_the_failure(tmp_path):
    body = b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(2000))
    data = gzip.compress(body)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    t = _read(tmp_path / "cut.jsonl.gz")
    reasons = t.column("reason").to_pylist()
    assert reasons[-1] == "input_truncated"  # was input_unreadable, which hid that ~1,000 records were lost
    n = reasons.count(None)
    assert n == len(reasons) - 1 > 0
    assert t.column("error").to_pylist()[-1].startswith(f"read stopped after {n} records; the rest of the file is lost")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.text(max_size=200).map(str.encode),
            st.builds(lambda s: json.dumps({"text": s}).encode(), st.text(max_size=300)),
        ),
        max_size=40,
    )
)
def test_every_nonblank_line_becomes_exactly_one_row(tmp_path_factory, lines):
    lines = [ln.replace(b"\n", b" ").replace(b"\r", b" ") for ln in lines]
    path = tmp_path_factory.mktemp("h") / "junk.jsonl"
    path.write_bytes(b"\n".join(lines))
    t = _read(path)
    assert t.num_rows == sum(1 for ln in lines if ln.strip())
    live = t.filter(pa.compute.is_null(t.column("reason")))
    assert all(isinstance(x, str) and x.strip() for x in live.column("text").to_pylist())
