"""Shard sink: size-targeted, atomic, deterministic names; round trip through the reader."""

import pyarrow as pa
import pyarrow.parquet as pq

from storage.schema import INTERNAL_COLUMNS, READ_SCHEMA
from storage.shards import CheckpointLayout, RunLayout, ShardSink, read_shards


def _rows(n: int, domains=("a", "b"), removed_every: int = 0) -> pa.Table:
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols["id"] = [f"id{i:04d}" for i in range(n)]
    cols["text"] = [f"document {i} " + "x" * 200 for i in range(n)]
    cols["domain"] = [domains[i % len(domains)] for i in range(n)]
    cols["source"] = ["mem"] * n
    if removed_every:
        cols["reason"] = ["too_short" if i % removed_every == 0 else None for i in range(n)]
        cols["stage"] = ["length" if i % removed_every == 0 else None for i in range(n)]
    return pa.table(cols, schema=READ_SCHEMA)


def test_tiny_target_forces_many_shards_and_round_trips(tmp_path):
    table = _rows(117)
    sink = ShardSink(str(tmp_path), RunLayout(INTERNAL_COLUMNS), target_bytes=1 << 10)
    files = sink.write_now([table.slice(0, 60), table.slice(60)])
    by_dir = {}
    for f in files:
        by_dir.setdefault(f.partition, []).append(f.path)
    assert set(by_dir) == {"shards/domain=a", "shards/domain=b"}
    assert all(len(v) > 3 for v in by_dir.values())
    assert by_dir["shards/domain=a"][0].endswith("part-00000.parquet")
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written
    assert not list(tmp_path.glob("_tmp/*"))  # everything committed into place
    back = read_shards(str(tmp_path / "shards"))
    assert back.num_rows == 117
    assert sorted(back.column("id").to_pylist()) == sorted(table.column("id").to_pylist())
    assert "reason" not in back.column_names
    got = {r["id"]: r["domain"] for r in back.select(["id", "domain"]).to_pylist()}
    assert got == dict(zip(table.column("id").to_pylist(), table.column("domain").to_pylist()))
    # the partition column lives in the path, not the file
    one = pq.read_table(tmp_path / by_dir["shards/domain=a"][0])
    assert "domain" not in one.column_names


def test_removed_rows_go_to_stage_partitions_with_reasons(tmp_path):
    table = _rows(40, removed_every=4)
    ShardSink(str(tmp_path), RunLayout(INTERNAL_COLUMNS), target_bytes=1 << 20).write_now([table])
    removed = read_shards(str(tmp_path / "removed"))
    assert removed.num_rows == 10
    assert set(removed.column("reason").to_pylist()) == {"too_short"}
    assert set(removed.column("stage").to_pylist()) == {"length"}
    assert read_shards(str(tmp_path / "shards")).num_rows == 30


def test_second_commit_numbers_after_existing_parts(tmp_path):
    sink = ShardSink(str(tmp_path), CheckpointLayout(), target_bytes=1 << 20)
    sink.write_now([_rows(5)])
    sink.write_now([_rows(5)])
    names = sorted(p.name for p in (tmp_path / "live").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet"]


def test_metadata_columns_keep_their_types_in_shards_and_removed_and_are_counted_per_domain(tmp_path):
    from storage.manifest import RunContents
    from storage.schema import metadata_columns
    from storage.views import connect

    table = _rows(40, removed_every=4)
    n = table.num_rows
    meta = {
        "url": pa.array([f"https://e/{i}" if i % 2 else None for i in range(n)]),  # domain a: even rows, no url
        "page": pa.array([{"lang": "en", "links": [i, i + 1]} for i in range(n)]),
        "year": pa.array(["2020", '"MMXX"'] * (n // 2)),  # JSON text, as a fallback column stores it
    }
    for name, values in meta.items():
        table = table.append_column(name, values)
    assert metadata_columns(table.column_names) == ["url", "page", "year"]
    ShardSink(str(tmp_path), RunLayout(INTERNAL_COLUMNS), target_bytes=1 << 12).write_now([table])
    kept, removed = read_shards(str(tmp_path / "shards")), read_shards(str(tmp_path / "removed"))
    for part in (kept, removed):
        for name, values in meta.items():
            assert part.schema.field(name).type == values.type
    row = next(r for r in removed.to_pylist() if r["id"] == "id0004")
    assert (row["reason"], row["page"], row["year"]) == ("too_short", {"lang": "en", "links": [4, 5]}, "2020")
    domains = {d["domain"]: d["metadata"] for d in RunContents.read(str(tmp_path)).domains}
    assert [f["name"] for f in domains["a"]] == ["page", "year"]  # no url has a value in domain a
    assert domains["b"][0] == {"name": "url", "type": "string", "non_null": 20}  # all kept (removals are in a)
    assert domains["b"][1]["type"] == "struct<lang: string, links: list<element: int64>>"
    con = connect(str(tmp_path), manifest=None)
    sql = "SELECT count(*) FROM docs WHERE page.lang = 'en' AND url LIKE 'https://e/%'"
    assert con.execute(sql).fetchone() == (20,)
