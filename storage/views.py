"""DuckDB views over a run directory: docs, removed, shards, stages."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from storage.fs import expand_input, resolve
from storage.manifest import read_manifest

EMPTY_DOCS = (
    "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS text, NULL::VARCHAR AS domain, NULL::VARCHAR AS source LIMIT 0"
)
EMPTY_REMOVED = (
    "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS text, NULL::VARCHAR AS domain, NULL::VARCHAR AS source, "
    "NULL::VARCHAR AS reason, NULL::VARCHAR AS dup_of, NULL::BLOB AS raw, NULL::VARCHAR AS error, "
    "NULL::VARCHAR AS stage LIMIT 0"
)


def _parquet_view(con: duckdb.DuckDBPyConnection, name: str, out_dir: str, sub: str, empty: str) -> None:
    fs, root = resolve(out_dir)
    files = [p for p in expand_input(f"{root}/{sub}") if p.endswith(".parquet")]
    if not files:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {empty}")
    elif "://" not in out_dir:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}], hive_partitioning = true, "
            "union_by_name = true)"
        )
    else:  # object storage: scan through pyarrow's filesystem
        import pyarrow.dataset as pads

        ds = pads.dataset(files, filesystem=fs, format="parquet", partitioning="hive")
        con.register(f"_{name}_arrow", ds)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _{name}_arrow")


def connect(out_dir: str, manifest: dict | bool | None = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views ``docs`` and ``removed`` (and ``shards``,
    ``stages`` from the manifest: pass a manifest dict, True to read it, or None to skip)."""
    con = duckdb.connect()
    _parquet_view(con, "docs", out_dir, "shards", EMPTY_DOCS)
    _parquet_view(con, "removed", out_dir, "removed", EMPTY_REMOVED)
    if manifest is True:
        manifest = read_manifest(out_dir)
    if manifest:
        shards = pa.Table.from_pylist(
            manifest["shards"],
            schema=pa.schema(
                [
                    ("path", pa.string()),
                    ("partition", pa.string()),
                    ("rows", pa.int64()),
                    ("bytes", pa.int64()),
                    ("sha256", pa.string()),
                ]
            ),
        )
        stages = pa.Table.from_pylist(
            [
                {
                    "stage": s["stage"],
                    "op": s["op"],
                    "rows_in": s["rows_in"],
                    "rows_out": s["rows_out"],
                    "removed": sum(s["removed"].values()),
                    "seconds": s["seconds"],
                    "removed_by_reason": json.dumps(s["removed"]),
                }
                for s in manifest["stages"]
            ],
            schema=pa.schema(
                [
                    ("stage", pa.string()),
                    ("op", pa.string()),
                    ("rows_in", pa.int64()),
                    ("rows_out", pa.int64()),
                    ("removed", pa.int64()),
                    ("seconds", pa.float64()),
                    ("removed_by_reason", pa.string()),
                ]
            ),
        )
        con.register("_shards", shards)
        con.register("_stages", stages)
        con.execute(
            "CREATE OR REPLACE VIEW shards AS SELECT regexp_extract(partition, '=(.*)$', 1) AS domain, * FROM _shards"
        )
        con.execute("CREATE OR REPLACE VIEW stages AS SELECT * FROM _stages")
    return con
