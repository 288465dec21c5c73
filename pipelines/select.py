"""Re-select a finished run from its stored score columns with DuckDB: filters and token budgets, no model reruns.

Run: ``sluice select out/run --where "ppl < 300 AND quality > 0.5" --budget-tokens 50M -o out/run-50m``
(or ``pipelines.select.select("out/run", "ppl < 300", 50_000_000, dest="out/run-50m")`` from Python).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from storage.manifest import ConservationError, RunContents, assemble, read_manifest, write_manifest
from storage.run import (
    MANIFEST,
    REMOVED,
    SHARDS,
    RunDir,
    RunLockedError,
    UnsafePathError,
    atomic_write,
    overlap,
    partition_value,
)
from storage.schema import DUP_OF, ERROR, INTERNAL_COLUMNS, RAW, REASON, STAGE
from storage.shards import RunLayout, ShardSink
from storage.views import WHITESPACE_TOKENS, check_expression, connect, has_column

logger = logging.getLogger(__name__)

STAGE_NAME = "select"
NOT_SELECTED = "select_not_selected"
OVER_BUDGET = "select_over_budget"
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """``12000``, ``50M``, ``1.5B`` -> an integer token count."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    if not m:
        raise ValueError(f"not a token count: {text!r} (use e.g. 5000000, 50M, 1.5B)")
    return int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])


def _arrow(con, query: str) -> pa.Table:
    """A query's result as a pyarrow Table (DuckDB 2 calls it to_arrow_table, 1.x arrow)."""
    rel = con.sql(query)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


def _decide(
    con, where: str | None, budget_tokens: int | None, budgets: dict[str, int], order_by: str | None, seed: int
) -> tuple[str, str]:
    """Create the temp table ``_decision(id, domain, tok, status)``; return (token expression, order expression)."""
    import duckdb

    tok = WHITESPACE_TOKENS
    if has_column(con, "docs", "n_tokens"):
        tok = f"coalesce(n_tokens, {WHITESPACE_TOKENS})"
    tie = f"md5(concat('{int(seed)}:', id))"
    order = f"{order_by}, {tie}" if order_by else tie
    con.register(
        "_budgets",
        pa.table({"domain": pa.array(list(budgets), pa.string()), "cap": pa.array(list(budgets.values()), pa.int64())}),
    )
    cap = "NULL" if budget_tokens is None else str(int(budget_tokens))
    sql = f"""
    CREATE TEMP TABLE _decision AS
    WITH base AS (
        SELECT id, domain, ({tok})::BIGINT AS tok, coalesce(({where or "TRUE"}), FALSE) AS sel,
               row_number() OVER (ORDER BY {order}) AS rk
        FROM docs
    ),
    dom AS (
        SELECT b.*, sum(tok) OVER (PARTITION BY b.domain ORDER BY rk ROWS UNBOUNDED PRECEDING) AS cum_dom, g.cap
        FROM base b LEFT JOIN _budgets g USING (domain) WHERE sel
    ),
    fits AS (
        SELECT *, sum(tok) OVER (ORDER BY rk ROWS UNBOUNDED PRECEDING) AS cum
        FROM dom WHERE cap IS NULL OR cum_dom <= cap
    )
    SELECT b.id, b.domain, b.tok, b.rk,
           CASE WHEN NOT b.sel THEN '{NOT_SELECTED}'
                WHEN g.id IS NULL OR g.cum > coalesce({cap}, g.cum) THEN '{OVER_BUDGET}'
           END AS status
    FROM base b LEFT JOIN fits g ON b.rk = g.rk
    """
    try:
        con.execute(sql)
    except duckdb.Error as e:
        raise ValueError(
            f"select: DuckDB rejected the selection (where={where!r}, order_by={order_by!r}): {e}"
        ) from None
    return tok, order


def _source_tables(out: str, decision: pa.Table):
    """Every kept shard of the source run with ``domain``, ``reason`` and ``stage`` filled from the decision."""
    src = RunDir(out)
    for path in src.parquet(SHARDS):
        domain = partition_value(path[len(src.root) + 1 :])
        table = pq.read_table(src.fs.open_input_file(path))
        n = table.num_rows
        pos = pc.index_in(table.column("id"), value_set=decision.column("id"))
        reason = pc.take(decision.column("status"), pos)  # null where kept (id not in the decision)
        table = table.append_column("domain", pa.array([domain] * n, pa.string()))
        table = table.append_column(REASON, reason.cast(pa.string()))
        table = table.append_column(STAGE, pc.if_else(pc.is_valid(reason), STAGE_NAME, pa.scalar(None, pa.string())))
        for name, typ in ((DUP_OF, pa.string()), (RAW, pa.binary()), (ERROR, pa.string())):
            table = table.append_column(name, pa.nulls(n, typ))
        yield table


def select(
    out: str,
    where: str | None = None,
    budget_tokens: int | None = None,
    per_domain_budget: dict[str, int] | None = None,
    dest: str | None = None,
    order_by: str | None = None,
    *,
    seed: int = 0,
    shard_mb: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a new run directory ``dest`` holding the documents of run ``out`` that pass ``where``
    and fit the token budgets; return its manifest. No score is recomputed.

    Documents are taken in order (``order_by``, then a hash of (seed, id); without
    ``order_by`` the hash order alone, i.e. a deterministic uniform sample) while their
    cumulative tokens stay within the budget: ``per_domain_budget`` caps each listed domain,
    then ``budget_tokens`` caps the total. The first document that would exceed a cap and all
    later ones are left out, so a budget is met from below within one document. Tokens are
    ``n_tokens`` when the run has that column, else whitespace tokens (runs of non-whitespace).

    ``dest`` gets ``shards/`` (the selection), ``removed/`` (the source's removed rows, copied,
    plus ``stage=select`` rows with reason ``select_not_selected`` or ``select_over_budget``)
    and ``manifest.json``, so rows read by the source run = kept + removed still holds.

    Args:
        out: a finished run directory (with manifest.json).
        where: a DuckDB SQL predicate over the ``docs`` view, e.g. ``ppl < 300 AND quality > 0.5``;
            a NULL result counts as false.
        budget_tokens: cap on the selection's total tokens.
        per_domain_budget: caps per domain (domains not listed are capped only by ``budget_tokens``).
        dest: the new run directory.
        order_by: SQL ORDER BY terms deciding which documents a budget keeps, e.g. ``quality DESC``.
        seed: changes the hash order.
        shard_mb: target shard size; default: the source recipe's.
        overwrite: replace an existing ``dest``.
    """
    if not dest:
        raise ValueError("select: dest (the new run directory) is required")
    if overlap(dest, out):
        raise UnsafePathError(
            f"select: {dest!r} is, contains or lies inside the source run {out!r}; choose a directory outside it"
        )
    if where is not None:
        check_expression(where, "--where")
    if order_by is not None:
        check_expression(order_by, "--order-by", "SELECT 1 FROM docs ORDER BY {}")
    read_manifest(out)  # a finished run, before anything is written
    rd = RunDir(dest)
    rd.claim(kind="select")
    with rd.lock("sluice select"):
        return _select(rd, out, where, budget_tokens, per_domain_budget, order_by, seed, shard_mb, overwrite)


def _select(rd, out, where, budget_tokens, per_domain_budget, order_by, seed, shard_mb, overwrite) -> dict[str, Any]:
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    dest = rd.uri
    budgets = dict(per_domain_budget or {})
    for name, v in [*budgets.items(), *([("budget_tokens", budget_tokens)] if budget_tokens is not None else [])]:
        if v < 0:
            raise ValueError(f"select: budget for {name!r} must be >= 0, got {v}")
    src = read_manifest(out)
    fs, root = rd.fs, rd.root
    if any(rd.files(SHARDS)) or any(rd.files(REMOVED)) or any(rd.files(MANIFEST)):
        if not overwrite:
            raise FileExistsError(f"select: {dest!r} is not empty; pass overwrite=True (--overwrite) to replace it")
        rd.clear()

    con = connect(out, manifest=None, read_only=True)
    dups = con.execute("SELECT count(*) - count(DISTINCT id) FROM docs").fetchone()[0]
    if dups:
        raise ValueError(f"select: {dups} duplicate ids in {out!r}; selection needs unique document ids")
    unknown = sorted(set(budgets) - {r[0] for r in con.execute("SELECT DISTINCT domain FROM docs").fetchall()})
    if unknown:
        raise ValueError(f"select: per-domain budget for domains not in the run: {', '.join(unknown)}")
    tok, order = _decide(con, where, budget_tokens, budgets, order_by, seed)
    decision = _arrow(con, "SELECT id, status FROM _decision WHERE status IS NOT NULL")
    by_domain = con.execute(
        "SELECT domain, count(*) AS docs, sum(tok) AS tokens, "
        "count(*) FILTER (WHERE status IS NULL) AS kept_docs, "
        "coalesce(sum(tok) FILTER (WHERE status IS NULL), 0) AS kept_tokens, "
        f"count(*) FILTER (WHERE status = '{NOT_SELECTED}') AS not_selected, "
        f"count(*) FILTER (WHERE status = '{OVER_BUDGET}') AS over_budget "
        "FROM _decision GROUP BY domain ORDER BY domain"
    ).fetchall()
    con.close()

    # the source's removed rows, byte for byte, then this selection's shards and removed rows
    source = RunDir(out)
    for path in source.parquet(REMOVED):
        with source.fs.open_input_stream(path) as r:
            atomic_write(fs, f"{root}/{path[len(source.root) + 1 :]}", r.read())
    mb = shard_mb or (src.get("recipe") or {}).get("output", {}).get("shard_mb", 256)
    ShardSink(dest, RunLayout(INTERNAL_COLUMNS), int(mb * (1 << 20))).write_now(_source_tables(out, decision))

    c = src["conservation"]
    gone = {
        r: n
        for r, n in ((NOT_SELECTED, sum(d[5] for d in by_domain)), (OVER_BUDGET, sum(d[6] for d in by_domain)))
        if n
    }
    report = {
        "where": where,
        "order_by": order_by,
        "order_sql": order,
        "seed": seed,
        "budget_tokens": budget_tokens,
        "per_domain_budget": budgets,
        "token_unit": "n_tokens" if tok.startswith("coalesce") else "whitespace tokens",
        "domains": {
            d: {"docs": n, "tokens": t, "kept_docs": kd, "kept_tokens": kt, "budget": budgets.get(d)}
            for d, n, t, kd, kt, _, _ in by_domain
        },
        "kept_tokens": sum(d[4] for d in by_domain),
    }
    rows_in = sum(d[1] for d in by_domain)
    seconds = time.perf_counter() - t0
    head = {
        "kind": "select",
        "source": {"dir": out, "recipe_hash": src.get("recipe_hash"), "finished": src.get("finished")},
        "recipe": src.get("recipe"),
        "recipe_text": src.get("recipe_text", ""),
        "recipe_hash": src.get("recipe_hash"),
    }
    step = {
        "stage": STAGE_NAME,
        "op": "select",
        "rows_in": rows_in,
        "rows_out": rows_in - sum(gone.values()),
        "removed": gone,
        "seconds": round(seconds, 3),
        "report": report,
    }
    manifest = assemble(
        RunContents.read(dest),
        head=head,
        started=started,
        seconds=seconds,
        stages=[*src.get("stages", []), step],
        read=c["read"],
        synthetic=c.get("synthetic", 0),
        extra={"segments": src.get("segments", []), "metadata": src.get("metadata")},
    )
    write_manifest(dest, manifest)
    if not manifest["conservation"]["ok"]:
        raise ConservationError(manifest["conservation"]["message"])
    kept = manifest["conservation"]["kept"]
    logger.info("select: kept %d of %d documents (%d tokens) in %s", kept, rows_in, report["kept_tokens"], dest)
    return manifest


def select_cmd(
    out: str = typer.Argument(..., help="A finished run directory (from `sluice curate`)."),
    where: str | None = typer.Option(
        None, "--where", help='SQL predicate over the docs view, e.g. "ppl < 300 AND quality > 0.5".'
    ),
    budget_tokens: str | None = typer.Option(
        None, "--budget-tokens", help="Cap on total tokens (e.g. 5000000, 50M, 1.5B)."
    ),
    per_domain_budget: list[str] | None = typer.Option(
        None, "--per-domain-budget", help="DOMAIN=TOKENS cap; repeat for several domains."
    ),
    order_by: str | None = typer.Option(
        None, "--order-by", help='Which documents a budget keeps first, e.g. "quality DESC"; default: hash order.'
    ),
    dest: str = typer.Option(..., "-o", "--out", help="The new run directory."),
    seed: int = typer.Option(0, "--seed", help="Changes the hash order."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Re-select a finished run from its stored scores (SQL filter + token budgets) into a new run directory."""
    try:
        budgets = {}
        for item in per_domain_budget or []:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ValueError(f"--per-domain-budget expects DOMAIN=TOKENS, got {item!r}")
            budgets[name] = parse_count(value)
        total = parse_count(budget_tokens) if budget_tokens is not None else None
        m = select(out, where, total, budgets, dest, order_by, seed=seed, overwrite=overwrite)
    except (ValueError, FileExistsError, FileNotFoundError, RunLockedError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    st = m["stages"][-1]
    c = m["conservation"]
    removed = ", ".join(f"{k} {v:,}" for k, v in st["removed"].items()) or "none"
    typer.echo(
        f"Selected {st['rows_out']:,} of {st['rows_in']:,} documents ({st['report']['kept_tokens']:,} tokens, "
        f"{st['report']['token_unit']}) into {dest}/shards; removed: {removed}. "
        f"Conservation: read {c['read']:,} = kept {c['kept']:,} + removed {c['removed']:,}."
    )
