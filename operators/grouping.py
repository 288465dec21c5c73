"""Repeated keys over a whole dataset: the first pass of exact dedup and of the input-id check.

A small dataset (the runner knows how many live rows a step reads) is grouped in the driver
with Arrow: a Ray shuffle costs seconds of fixed overhead (aggregator actors or a sort's
sampling stage) whatever the size, which dominated small runs. A large one is grouped by
Ray Data's hash aggregation over ``num_partitions`` partitions. Both give the same table.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from operators.base import StageContext, in_process, tables

#: at most this many rows (a key and a value each, ~100 bytes) are grouped in the driver
DRIVER_GROUP_ROWS = 1_000_000


def repeated(ds, key: str, value: str, ctx: StageContext) -> pa.Table:
    """``(key, n, first)`` for every key that occurs in more than one row of ``ds`` (a dataset of the two
    string columns ``key`` and ``value``): ``n`` rows, ``first`` the smallest value among them."""
    schema = pa.schema([(key, pa.string()), ("n", pa.int64()), ("first", pa.string())])
    if in_process(ds) or (ctx.rows is not None and ctx.rows <= DRIVER_GROUP_ROWS):
        table = _group_in_driver(ds, key, value)
    else:
        table = _group_with_ray(ds, key, value, ctx.num_partitions)
    if table is None:
        return schema.empty_table()
    return table.filter(pc.greater(table.column("n"), 1)).select(schema.names).cast(schema)


def _group_in_driver(ds, key: str, value: str) -> pa.Table | None:
    parts = [t.select([key, value]) for t in tables(ds) if t.num_rows]
    if not parts:
        return None
    rows = pa.concat_tables(parts, promote_options="permissive")
    grouped = rows.group_by(key, use_threads=False).aggregate([([], "count_all"), (value, "min")])
    return grouped.rename_columns({"count_all": "n", f"{value}_min": "first"})


def _group_with_ray(ds, key: str, value: str, num_partitions: int) -> pa.Table | None:
    from ray.data.aggregate import Count, Min

    groups = (
        ds.groupby(key, num_partitions=num_partitions)
        .aggregate(Count(alias_name="n"), Min(value, alias_name="first"))
        .filter(expr="n > 1")
    )
    parts = [t.select([key, "n", "first"]) for t in tables(groups) if t.num_rows]
    return pa.concat_tables(parts, promote_options="permissive") if parts else None
