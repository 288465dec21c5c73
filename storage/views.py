"""DuckDB views over a run directory: docs, removed, shards, stages."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from storage.manifest import read_manifest
from storage.run import REMOVED, SHARDS, RunDir

#: whitespace tokens in SQL: runs of non-whitespace (RE2 ``\S+``), what ``str.split()`` counts for ASCII text
WHITESPACE_TOKENS = r"len(regexp_extract_all(coalesce(text, ''), '\S+'))"

EMPTY_DOCS = (
    "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS text, NULL::VARCHAR AS domain, NULL::VARCHAR AS source LIMIT 0"
)
EMPTY_REMOVED = (
    "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS text, NULL::VARCHAR AS domain, NULL::VARCHAR AS source, "
    "NULL::VARCHAR AS reason, NULL::VARCHAR AS dup_of, NULL::BLOB AS raw, NULL::VARCHAR AS error, "
    "NULL::VARCHAR AS stage LIMIT 0"
)


def has_column(con: duckdb.DuckDBPyConnection, view: str, col: str) -> bool:
    """Whether ``view`` has a column ``col`` (score columns exist only when a stage wrote them)."""
    return col in columns(con, view)


def columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()}


def _parquet_view(con: duckdb.DuckDBPyConnection, name: str, out_dir: str, sub: str, empty: str) -> list[str]:
    """Create view ``name`` over the Parquet files under ``sub``; return those files."""
    run = RunDir(out_dir)
    fs, files = run.fs, run.parquet(sub)
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
    return files


def connect(out_dir: str, manifest: dict | bool | None = True, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views ``docs`` and ``removed`` (and ``shards``,
    ``stages`` from the manifest: pass a manifest dict, True to read it, or None to skip).

    With ``read_only`` the connection may read the run's Parquet files and nothing else: no
    other file, no writes (``COPY … TO``), no extensions, and the setting cannot be undone
    (``lock_configuration``), so user-supplied SQL expressions can be run on it.
    """
    con = duckdb.connect()
    files = _parquet_view(con, "docs", out_dir, SHARDS, EMPTY_DOCS)
    files += _parquet_view(con, "removed", out_dir, REMOVED, EMPTY_REMOVED)
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
    if read_only:
        if "://" not in out_dir:
            con.execute("SET allowed_paths = $1", [files or [""]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def check_expression(text: str, what: str, template: str = "SELECT ({}) FROM docs") -> str:
    """``text`` if it is one SQL expression (or ORDER BY list, with ``template``), else ValueError.

    Outside string literals it must have balanced parentheses, no ``;`` and no comment, and
    inside ``template`` it must parse as exactly one SELECT statement: it cannot end the
    query it is put in or start another.
    """
    depth, quote, prev = 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "()":
            depth += 1 if ch == "(" else -1
        if depth < 0 or (quote is None and (ch == ";" or prev + ch in ("--", "/*"))):
            raise ValueError(f"{what} must be one SQL expression (no ';', comment or unmatched ')'): {text!r}")
        prev = ch if quote is None else ""
    if depth or quote:
        raise ValueError(f"{what} must be one SQL expression (unclosed parenthesis or quote): {text!r}")
    try:
        stmts = duckdb.extract_statements(template.format(text))
    except duckdb.Error as e:
        raise ValueError(f"{what} is not a valid SQL expression: {e}") from None
    if len(stmts) != 1 or stmts[0].type != duckdb.StatementType.SELECT:
        raise ValueError(f"{what} must be one SQL expression, not several statements: {text!r}")
    return text


def repeated_ids(files: list[str], limit: int = 5) -> tuple[int, list[tuple[str, int, str, str]]]:
    """Ids held by more than one row of ``files`` (local Parquet; rows the reader already marked
    ``input_duplicate_id`` left out): their number, and up to ``limit`` of them as
    (id, rows, first source, last source)."""
    if not files:
        return 0, []
    con = duckdb.connect()
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW rows AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
    where = "WHERE reason IS NULL OR reason <> 'input_duplicate_id'" if has_column(con, "rows", "reason") else ""
    con.execute(
        "CREATE TEMP TABLE rep AS SELECT id, count(*) AS n, min(source) AS a, max(source) AS b "
        f"FROM rows {where} GROUP BY id HAVING count(*) > 1"
    )
    total = con.execute("SELECT count(*) FROM rep").fetchone()[0]
    rows = con.execute(f"SELECT id, n, a, b FROM rep ORDER BY id LIMIT {int(limit)}").fetchall()
    con.close()
    return int(total), [(str(i), int(n), str(a), str(b)) for i, n, a, b in rows]
