"""Input metadata: every record field kept as a typed column, through the reader, the runner, select and serve."""

import gzip
import json
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.metadata import SCAN_CHUNK
from pipelines.readers import ROWS_PER_BLOCK, InputDatasource, read_file
from pipelines.recipe import RecipeError, parse_recipe
from pipelines.runner import run
from storage.schema import READ_SCHEMA
from storage.shards import read_shards
from tests.conftest import prose, write_jsonl


def _recipe(inputs: str, out, stages: str = "  - {op: normalize}") -> str:
    return f'inputs:\n{inputs}\nstages:\n{stages}\noutput: {{dir: "{out}", shard_mb: 0.002}}\n'


def _read(text: str):
    """Scan and read a recipe's inputs as the runner's first segment does: (metadata, every row)."""
    source = InputDatasource(parse_recipe(text).inputs)
    meta = source.scan_metadata()
    blocks = [b for t in source.tasks for b in read_file(t, None, meta)]
    assert blocks and all(b.schema == meta.read_schema for b in blocks)  # one schema for every block
    return meta, pa.concat_tables(blocks)


def _by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


# ---------------------------------------------------------------- reader and scan
def test_a_field_first_seen_late_is_typed_and_every_block_has_it(tmp_path):
    n = ROWS_PER_BLOCK + SCAN_CHUNK  # the field appears past the first scan chunk and the first block
    late = ROWS_PER_BLOCK + 100
    recs = [{"id": f"r{i}", "text": f"doc {i}", "n": i} for i in range(n)]
    recs[late]["late"] = {"x": 1, "when": "2024-01-01"}
    recs[-1]["n"] = 0.5  # int64 and float64 make float64
    write_jsonl(tmp_path / "a.jsonl", recs)
    write_jsonl(tmp_path / "b.jsonl", [{"id": "b", "text": "other", "url": "https://example.org/b"}])
    meta, t = _read(_recipe(f'  - {{path: "{tmp_path}/*.jsonl", domain: web}}', tmp_path / "out"))
    assert meta.schema == pa.schema(
        [("n", pa.float64()), ("late", pa.struct([("x", pa.int64()), ("when", pa.string())])), ("url", pa.string())]
    )
    assert not meta.json
    rows = _by_id(t)
    assert rows[f"r{late}"]["late"] == {"x": 1, "when": "2024-01-01"} and rows["r0"]["late"] is None
    assert rows["r7"]["n"] == 7.0 and rows[f"r{n - 1}"]["n"] == 0.5
    assert rows["b"]["url"] == "https://example.org/b" and rows["r0"]["url"] is None
    assert t.schema.names[: len(READ_SCHEMA)] == READ_SCHEMA.names


def test_conflicting_types_become_json_text_and_the_reason_names_files_and_lines(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "year": 2020, "info": {"k": 1}, "ok": [1, 2]}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "year": "2020"}, {"text": "c", "info": "plain"}])
    write_jsonl(tmp_path / "c.jsonl", [{"text": "d", "mixed": [1, "x"]}, {"text": "e", "big": 2**70}])
    meta, t = _read(_recipe(f'  - {{path: "{tmp_path}/*.jsonl", domain: web}}', tmp_path / "out"))
    assert set(meta.json) == {"year", "info", "mixed", "big"}
    assert meta.json["year"] == f"int64 at {tmp_path}/a.jsonl line 1 vs string at {tmp_path}/b.jsonl line 1"
    assert meta.json["info"].startswith("struct<k: int64> at") and f"{tmp_path}/b.jsonl line 2" in meta.json["info"]
    assert f"{tmp_path}/c.jsonl" in meta.json["mixed"] and f"{tmp_path}/c.jsonl line 2" in meta.json["big"]
    assert meta.schema.field("ok").type == pa.list_(pa.int64())
    by_text = {r["text"]: r for r in t.to_pylist()}
    assert by_text["a"]["year"] == "2020" and by_text["b"]["year"] == '"2020"'  # JSON text keeps 2020 and "2020" apart
    assert json.loads(by_text["a"]["info"]) == {"k": 1} and by_text["c"]["info"] == '"plain"'
    assert by_text["d"]["mixed"] == '[1, "x"]' and by_text["e"]["big"] == str(2**70)
    assert by_text["b"]["info"] is None  # missing stays SQL NULL
    report = meta.report()
    assert report["json_fallbacks"]["year"] == meta.json["year"]
    assert {c["name"]: c["json"] for c in report["columns"]}["ok"] is False


def test_parquet_keeps_arrow_types_and_widens_across_files(tmp_path):
    (tmp_path / "p").mkdir()
    when = pa.array([datetime(2024, 1, 1), datetime(2024, 2, 1)], pa.timestamp("us"))
    pq.write_table(
        pa.table(
            {
                "content": ["one", "two"],
                "license": pa.array(["mit", "gpl"]).dictionary_encode(),
                "stars": pa.array([1, 2], pa.int32()),
                "created": when,
                "owner": pa.array([{"name": "a", "id": 1}, None]),
                "flag": [1, 2],
                "__index_level_0__": [10, 11],  # pandas' index, not a record field
            }
        ),
        tmp_path / "p" / "a.parquet",
    )
    pq.write_table(
        pa.table({"content": ["three"], "stars": pa.array([3], pa.int64()), "flag": ["yes"]}),
        tmp_path / "p" / "b.parquet",
    )
    meta, t = _read(_recipe(f'  - {{path: "{tmp_path}/p", domain: code, text_field: content}}', tmp_path / "out"))
    types = {f.name: f.type for f in meta.schema}
    assert list(types) == ["license", "stars", "created", "owner", "flag"]
    assert types["license"] == pa.string() and types["stars"] == pa.int64()  # int32 + int64 widen, no fallback
    assert types["created"] == pa.timestamp("us")
    assert types["owner"] == pa.struct([("name", pa.string()), ("id", pa.int64())])
    assert set(meta.json) == {"flag"} and "int64" in meta.json["flag"] and "string" in meta.json["flag"]
    by_text = {r["text"]: r for r in t.to_pylist()}
    assert by_text["one"]["license"] == "mit" and by_text["one"]["created"] == datetime(2024, 1, 1)
    assert by_text["one"]["owner"] == {"name": "a", "id": 1} and by_text["three"]["stars"] == 3
    assert [by_text[k]["flag"] for k in ("one", "three")] == ["1", '"yes"']


def test_malformed_lines_keep_their_reasons_and_parsed_records_keep_their_metadata(tmp_path):
    body = b"".join(json.dumps({"text": f"doc {i} " * 50, "n": i}).encode() + b"\n" for i in range(2000))
    data = gzip.compress(body)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])  # breaks part-way
    write_jsonl(tmp_path / "skip.jsonl", [{"text": "left out", "secret": 1}])
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"id": "ok", "text": "fine", "url": "https://e/ok"},
            b"{broken",
            {"id": "notext", "body": "x", "url": "https://e/notext"},
            {"id": "ok", "text": "again", "url": "https://e/again"},
        ],
    )
    opts = "on_duplicate_id: remove, exclude: ['skip.*']"
    meta, t = _read(_recipe(f'  - {{path: "{tmp_path}", domain: web, {opts}}}', tmp_path / "out"))
    assert meta.schema.names == ["url", "body", "n"]  # nothing from the excluded file
    rows = [r for r in t.to_pylist() if r["source"].endswith("a.jsonl")]
    assert [r["reason"] for r in rows] == [None, "input_bad_json", "input_missing_text", "input_duplicate_id"]
    assert [r["url"] for r in rows] == ["https://e/ok", None, "https://e/notext", "https://e/again"]
    assert rows[1]["raw"] == b"{broken" and rows[2]["body"] == "x"
    cut = [r for r in t.to_pylist() if r["source"].endswith("cut.jsonl.gz")]
    assert cut[-1]["reason"] == "input_truncated" and cut[-1]["n"] is None
    assert [r["n"] for r in cut[:-1]] == list(range(len(cut) - 1)) and len(cut) > 1
    skipped = [r for r in t.to_pylist() if r["source"].endswith("skip.jsonl")]
    assert [r["reason"] for r in skipped] == ["input_excluded"]


def test_fields_drop_fields_and_rename(tmp_path):
    rec = {"text": "t", "url": "u", "meta": {"a": 1}, "junk": 1, "source": "cc"}
    write_jsonl(tmp_path / "a" / "x.jsonl", [rec])
    write_jsonl(tmp_path / "b" / "x.jsonl", [rec])
    meta, t = _read(
        _recipe(
            f'  - {{path: "{tmp_path}/a", domain: web, fields: [url, meta, nowhere], rename: {{meta: page}}}}\n'
            f'  - {{path: "{tmp_path}/b", domain: other, drop_fields: [junk], rename: {{source: origin, typo: x}}}}',
            tmp_path / "out",
        )
    )
    assert meta.schema.names == ["url", "page", "meta", "origin"]
    assert meta.columns == [{"url": "url", "meta": "page"}, {"url": "url", "meta": "meta", "source": "origin"}]
    assert meta.not_found == [["nowhere"], ["typo"]]
    a, b = t.to_pylist()
    assert (a["page"], a["meta"], a["origin"]) == ({"a": 1}, None, None)
    assert (b["page"], b["meta"], b["origin"], b["source"]) == (None, {"a": 1}, "cc", str(tmp_path / "b" / "x.jsonl"))


def test_a_field_named_like_a_sluice_column_is_an_error_naming_field_and_input(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "t", "source": "cc", "PPL": 3.5, "Url": "u", "url": "v"}])
    with pytest.raises(RecipeError) as e:
        _read(_recipe(f'  - {{path: "{tmp_path}/a.jsonl", domain: web}}', tmp_path / "out"))
    msg = str(e.value)
    where = f"inputs[0] (path '{tmp_path}/a.jsonl', domain 'web')"
    assert f"{where}: field 'source' clashes with the column 'source'" in msg
    assert "field 'PPL' clashes with the column 'ppl'" in msg and "rename: {source: <new name>}" in msg
    assert "'Url', 'url' differ only in case" in msg
    opts = "rename: {source: origin, PPL: crawl_ppl}, drop_fields: [Url]"
    inputs = f'  - {{path: "{tmp_path}/a.jsonl", domain: web, {opts}}}'
    meta, t = _read(_recipe(inputs, tmp_path / "out"))
    assert meta.schema.names == ["origin", "crawl_ppl", "url"]
    assert t.to_pylist()[0]["crawl_ppl"] == 3.5


def test_recipe_validation_of_the_metadata_options(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "t"}])
    path = f"{tmp_path}/a.jsonl"
    bad = {
        "fields: [url], drop_fields: [x]": "at most one of `fields` and `drop_fields`",
        "rename: {url: source}": "rename 'url' to 'source' clashes with a column Sluice writes",
        "fields: [quality]": "field 'quality' clashes with a column Sluice writes",
        "fields: [text]": "'text' is the input's text_field",
        "rename: {a: x, b: x}": "rename maps two fields onto one column",
        "drop_fields: [url], rename: {url: link}": "rename 'url': that field is left out",
        "format: text, fields: [url]": "`format: text` inputs have no record fields",
    }
    for opts, expected in bad.items():
        with pytest.raises(RecipeError) as e:
            parse_recipe(_recipe(f'  - {{path: "{path}", domain: web, {opts}}}', tmp_path / "out"))
        assert "inputs[0] (line 2)" in str(e.value) and expected in str(e.value), opts
    ok = parse_recipe(_recipe(f'  - {{path: "{path}", domain: web, fields: [quality], rename: {{quality: q}}}}', "o"))
    assert ok.inputs[0].rename == {"quality": "q"}


def test_the_records_own_id_is_the_default_id(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": 7, "text": "seven"}, {"text": "no id"}])
    _, t = _read(_recipe(f'  - {{path: "{tmp_path}/a.jsonl", domain: web}}', tmp_path / "out"))
    ids = t.column("id").to_pylist()
    assert ids[0] == "7" and len(ids[1]) == 24  # a record without one gets the hash of file and row
    with pytest.raises(RecipeError, match="field 'id' clashes with the column 'id'"):  # id_field: null hashes every id
        _read(_recipe(f'  - {{path: "{tmp_path}/a.jsonl", domain: web, id_field: null}}', tmp_path / "out"))
    inputs = f'  - {{path: "{tmp_path}/a.jsonl", domain: web, id_field: null, rename: {{id: record_id}}}}'
    _, t = _read(_recipe(inputs, tmp_path / "out"))
    assert t.column("record_id").to_pylist() == [7, None] and t.column("id").to_pylist()[0] != "7"


def test_the_fingerprint_follows_fields_drop_fields_and_rename(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "t"}])
    base = f'  - {{path: "{tmp_path}/a.jsonl", domain: web'
    prints = {
        opts: parse_recipe(_recipe(base + opts + "}", tmp_path / "out")).fingerprint()
        for opts in ("", ", fields: [url]", ", fields: [url, date]", ", drop_fields: [url]", ", rename: {url: link}")
    }
    assert len(set(prints.values())) == len(prints)


# ---------------------------------------------------------------- through a whole run
def _corpus(root):
    web_a = [
        {
            "id": f"a{i}",
            "text": prose(i),
            "url": f"https://example.org/a/{i}",
            "date": f"2024-05-0{i + 1}",
            "meta": {"lang": "en", "score": i, "tags": ["x"] * i},
            "year": 2020 + i,
        }
        for i in range(4)
    ]
    web_a += [{"id": "a-short", "text": "too short to keep", "url": "https://example.org/short", "year": 1999}]
    write_jsonl(root / "in" / "web" / "a.jsonl", [*web_a, b"{not json"])
    near = prose(1).replace("Story 1 part 3:", "Story 1 part three:")
    web_b = [
        {"id": "b0", "text": prose(0), "url": "https://example.org/b/0", "year": "MMXX", "meta": {"lang": "de"}},
        {"id": "b1", "text": near, "url": "https://example.org/b/1", "year": "MMXXI"},
    ]
    write_jsonl(root / "in" / "web" / "b.jsonl", web_b)
    (root / "in" / "code").mkdir(parents=True)
    code = pa.table(
        {
            "content": [prose(100 + i) for i in range(3)],
            "repo": ["org/a", "org/b", "org/c"],
            "path": ["src/a.py", "src/b.py", "src/c.py"],
            "license": pa.array(["mit", "apache-2.0", "mit"]).dictionary_encode(),
            "stars": pa.array([5, 7, 9], pa.int32()),
        }
    )
    pq.write_table(code, root / "in" / "code" / "c.parquet")


@pytest.fixture(scope="module")
def curated(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("meta")
    _corpus(root)
    stages = (
        "  - {op: normalize}\n  - {op: length, min_chars: 100}\n  - {op: exact_dedup}\n"
        "  - {op: minhash_dedup, threshold: 0.8}\n  - {op: tokenize, tokenizer: 'packaged:smollm2-135m'}\n"
        "  - {op: split, holdout_fraction: 0.3}"
    )
    inputs = (
        f'  - {{path: "{root}/in/web/*.jsonl", domain: web}}\n'
        f'  - {{path: "{root}/in/code", domain: code, text_field: content, rename: {{path: file_path}}}}'
    )
    text = _recipe(inputs, root / "out", stages)
    return root, run(parse_recipe(text)), text


WEB_TYPES = {
    "url": pa.string(),
    "date": pa.string(),
    "meta": pa.struct([("lang", pa.string()), ("score", pa.int64()), ("tags", pa.list_(pa.string()))]),
    "year": pa.string(),  # JSON text: an int in a.jsonl, a string in b.jsonl
}


def _same(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, whatever their list item fields are called (Parquet names them ``element``)."""
    return str(a).replace("element:", "item:") == str(b).replace("element:", "item:")


CODE_TYPES = {"repo": pa.string(), "file_path": pa.string(), "license": pa.string(), "stars": pa.int32()}


def test_metadata_round_trips_into_shards_with_its_types(curated):
    root, m, _ = curated
    kept = read_shards(str(root / "out" / "shards"))
    for name, typ in {**WEB_TYPES, **CODE_TYPES}.items():
        assert _same(kept.schema.field(name).type, typ), name
    rows = _by_id(kept)
    assert set(rows) >= {"a0", "a1", "a2", "a3"} and not {"b0", "b1", "a-short"} & set(rows)
    a2 = rows["a2"]
    assert (a2["url"], a2["date"], a2["year"]) == ("https://example.org/a/2", "2024-05-03", "2022")
    assert a2["meta"] == {"lang": "en", "score": 2, "tags": ["x", "x"]}
    assert a2["n_tokens"] > 0 and a2["split"] in ("train", "holdout")
    assert (a2["dup_cluster"], a2["dup_cluster_size"]) == (-1, 1) and rows["a1"]["dup_cluster_size"] == 2
    code = sorted((r["repo"], r["file_path"], r["license"], r["stars"]) for r in rows.values() if r["domain"] == "code")
    assert code == [
        ("org/a", "src/a.py", "mit", 5),
        ("org/b", "src/b.py", "apache-2.0", 7),
        ("org/c", "src/c.py", "mit", 9),
    ]
    assert all(r["url"] is None for r in rows.values() if r["domain"] == "code")
    assert m["conservation"]["ok"] and m["conservation"]["read"] == 11


def test_removed_rows_keep_their_metadata_through_both_dedups(curated):
    root, _, _ = curated
    removed = _by_id(read_shards(str(root / "out" / "removed")))
    assert (removed["b0"]["reason"], removed["b0"]["dup_of"]) == ("exact_duplicate", "a0")
    assert (removed["b1"]["reason"], removed["b1"]["dup_of"]) == ("minhash_duplicate", "a1")
    assert removed["b0"]["year"] == '"MMXX"' and removed["b0"]["meta"] == {"lang": "de", "score": None, "tags": None}
    assert removed["b1"]["url"] == "https://example.org/b/1"
    assert (removed["a-short"]["reason"], removed["a-short"]["year"]) == ("length_too_short", "1999")
    bad = [r for r in removed.values() if r["reason"] == "input_bad_json"]
    assert len(bad) == 1 and bad[0]["url"] is None


def test_the_manifest_reports_metadata_per_domain_and_the_json_fallback(curated):
    root, m, _ = curated
    cols = {c["name"]: c for c in m["metadata"]["columns"]}
    assert list(cols) == [*WEB_TYPES, "repo", "file_path", "license", "stars"]
    assert cols["file_path"]["from"] == [{"input": 1, "field": "path"}] and cols["year"]["json"] is True
    why = m["metadata"]["json_fallbacks"]["year"]
    assert why == f"int64 at {root}/in/web/a.jsonl line 1 vs string at {root}/in/web/b.jsonl line 1"
    domains = {d["domain"]: {f["name"]: f for f in d["metadata"]} for d in m["domains"]}
    assert list(domains["code"]) == ["repo", "file_path", "license", "stars"]
    assert domains["code"]["stars"] == {"name": "stars", "type": "int32", "non_null": 3}
    assert list(domains["web"]) == list(WEB_TYPES) and domains["web"]["url"]["non_null"] == 4
    assert domains["web"]["meta"]["type"] == "struct<lang: string, score: int64, tags: list<element: string>>"
    assert domains["web"]["date"]["non_null"] == 4


def test_inspect_selects_metadata_columns(curated):
    from pipelines.cli import app

    root, _, _ = curated
    sql = "SELECT url, meta.lang AS lang, json_extract(year, '$') AS y FROM docs WHERE url IS NOT NULL ORDER BY url"
    res = CliRunner().invoke(app, ["inspect", str(root / "out"), sql, "--format", "json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert [r["url"] for r in got] == [f"https://example.org/a/{i}" for i in range(4)]
    assert {r["lang"] for r in got} == {"en"} and got[0]["y"] == "2020"


def test_select_and_serve_carry_or_ignore_metadata(curated, tmp_path):
    from mixers.server.corpus import Corpus
    from pipelines.select import select

    root, _, _ = curated
    m = select(str(root / "out"), "url LIKE '%/a/%' OR repo = 'org/b'", dest=str(tmp_path / "sel"))
    kept = read_shards(str(tmp_path / "sel" / "shards"))
    assert sorted(r["id"] for r in kept.to_pylist() if r["url"]) == ["a0", "a1", "a2", "a3"] and kept.num_rows == 5
    assert _same(kept.schema.field("meta").type, WEB_TYPES["meta"]) and kept.schema.field("stars").type == pa.int32()
    assert m["metadata"]["json_fallbacks"].keys() == {"year"} and m["conservation"]["ok"]
    corpus = Corpus(str(root / "out"))  # reads split / n_tokens / tokens only
    full = read_shards(str(root / "out" / "shards"))
    train = full.filter(pc.equal(full.column("split"), "train"))
    assert sum(corpus.tokens("train").values()) == pc.sum(train.column("n_tokens")).as_py()


def test_a_resumed_run_reports_the_same_metadata(curated):
    _, m, text = curated
    again = run(parse_recipe(text))  # every segment reused: the first one's record keeps the metadata report
    assert all(s["reused"] for s in again["segments"])
    assert again["metadata"] == m["metadata"] and again["domains"] == m["domains"]


def test_a_clash_found_in_the_data_fails_curate_as_an_invalid_recipe(tmp_path, ray_session):
    import logging

    from pipelines.cli import app

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": prose(1), "quality": 0.9}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe(f'  - {{path: "{tmp_path}/in/a.jsonl", domain: web}}', tmp_path / "out"))
    level = logging.getLogger("pipelines").level
    try:
        res = CliRunner().invoke(app, ["curate", str(recipe)])
    finally:  # curate sets the log level of this process's loggers
        logging.getLogger("pipelines").setLevel(level)
    assert res.exit_code == 2
    assert "invalid recipe" in res.output and "field 'quality' clashes with the column 'quality'" in res.output
    assert not (tmp_path / "out" / "shards").exists()
