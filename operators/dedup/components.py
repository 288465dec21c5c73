"""Connected components over spilled edge lists, and one deterministic survivor per cluster.

Memory: the driver holds two int64 arrays per *node* (documents that have an edge) and one
chunk of edges at a time; the edge list itself stays on disk (Parquet, then a numpy memmap
of dense indexes). 10M documents with 30% in clusters is ~50 MB of node arrays.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EDGE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])
CHUNK_ROWS = 1 << 22


class ParquetSpill:
    """Append tables to one Parquet file on the driver (the edge lists and node tables)."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows

    def close(self) -> str:
        self._writer.close()
        return self.path


def iter_parquet(path: str, columns: list[str], rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a Parquet file in batches of about ``rows``."""
    yield from pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns)


def distinct_edges(src: str, dst: str) -> int:
    """Write the distinct (a, b) rows of ``src`` to ``dst`` with polars' streaming engine; return the count."""
    import polars as pl

    pl.scan_parquet(src).select("a", "b").unique().sink_parquet(dst)
    return pq.read_metadata(dst).num_rows


def edge_nodes(path: str) -> np.ndarray:
    """Sorted distinct endpoints of the edges in ``path``."""
    parts = [
        np.unique(np.concatenate([b.column(0).to_numpy(), b.column(1).to_numpy()]))
        for b in iter_parquet(path, ["a", "b"])
    ]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _compress(parent: np.ndarray) -> np.ndarray:
    """Pointer jumping until every node points at its root."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def connected_components(path: str, chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Components of the undirected graph whose edges are the (a, b) rows of a Parquet file.

    Returns ``(nodes, root)``: the sorted node ids and, for each, the index (into ``nodes``)
    of its component's smallest node. Vectorised union–find: every pass hooks each edge's
    larger root onto its smaller one (``np.minimum.at``) chunk by chunk, then compresses
    paths by pointer jumping, until no edge joins two roots. Parents only ever point to
    smaller indexes, so the result is a pure function of the edge set (no order effects).
    """
    nodes = edge_nodes(path)
    n = len(nodes)
    parent = np.arange(n, dtype=np.int64)
    if n == 0:
        return nodes, parent
    with tempfile.TemporaryDirectory(prefix="sluice-cc-", dir=os.path.dirname(path) or None) as tmp:
        total = pq.read_metadata(path).num_rows
        dense = np.lib.format.open_memmap(os.path.join(tmp, "edges.npy"), mode="w+", dtype=np.int64, shape=(total, 2))
        lo = 0
        for batch in iter_parquet(path, ["a", "b"], chunk_rows):
            hi = lo + batch.num_rows
            dense[lo:hi, 0] = np.searchsorted(nodes, batch.column(0).to_numpy())
            dense[lo:hi, 1] = np.searchsorted(nodes, batch.column(1).to_numpy())
            lo = hi
        dense.flush()
        while True:
            changed = False
            for lo in range(0, total, chunk_rows):
                ra = parent[dense[lo : lo + chunk_rows, 0]]
                rb = parent[dense[lo : lo + chunk_rows, 1]]
                cross = ra != rb
                if cross.any():
                    changed = True
                    np.minimum.at(parent, np.maximum(ra[cross], rb[cross]), np.minimum(ra[cross], rb[cross]))
                    parent = _compress(parent)
            if not changed:
                break
        del dense
    return nodes, parent


CLUSTER_SCHEMA = pa.schema(
    [
        ("uid", pa.int64()),
        ("id", pa.string()),
        ("cluster", pa.int64()),
        ("size", pa.int64()),
        ("survivor", pa.string()),
    ]
)


def cluster_table(nodes: np.ndarray, root: np.ndarray, info) -> pa.Table:
    """One row per clustered document: its cluster number, the cluster's size and survivor id.

    ``info`` (a polars frame or lazy frame with ``uid``, ``id``, ``score``) names every node.
    The survivor is the member with the highest ``score`` (nulls last), ties and the
    ``lowest_id`` rule broken by the smallest ``id``. Clusters are numbered 0.. in the order
    of their survivors' ids, so numbers are stable across runs. Sorted by ``uid``.
    """
    import polars as pl

    if len(nodes) == 0:
        return CLUSTER_SCHEMA.empty_table()
    info = info.lazy() if isinstance(info, pl.DataFrame) else info
    info = info.select(pl.col("uid").cast(pl.Int64), pl.col("id").cast(pl.String), pl.col("score").cast(pl.Float64))
    info = info.with_columns(pl.col("score").fill_nan(None)).unique(subset=["uid", "id"])
    members = (
        pl.LazyFrame({"uid": nodes, "root": root.astype(np.int64)})
        .join(info, on="uid", how="left")
        .sort(["root", "score", "id"], descending=[False, True, False], nulls_last=True)
        .collect()
    )
    if members.height != len(nodes) or members["id"].null_count():
        clash = members.group_by("uid").len().filter(pl.col("len") > 1).height
        raise RuntimeError(
            f"minhash_dedup: {clash} document keys map to several ids and "
            f"{members['id'].null_count()} have none; ids must be unique (64-bit id hashes collided?)"
        )
    heads = (
        members.group_by("root", maintain_order=True)
        .agg(pl.col("id").first().alias("survivor"), pl.len().cast(pl.Int64).alias("size"))
        .sort("survivor")
        .with_row_index("cluster")
        .with_columns(pl.col("cluster").cast(pl.Int64))
    )
    out = members.join(heads, on="root").select("uid", "id", "cluster", "size", "survivor").sort("uid")
    return out.to_arrow().cast(CLUSTER_SCHEMA)


def size_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Cluster counts in power-of-two size bins: ``2``, ``3-4``, ``5-8``, …"""
    out: dict[str, int] = {}
    if sizes.size == 0:
        return out
    top = int(np.ceil(np.log2(max(int(sizes.max()), 2))))
    for k in range(1, top + 1):
        lo, hi = (1 << (k - 1)) + 1, 1 << k
        n = int(((sizes >= lo) & (sizes <= hi)).sum())
        if n:
            out[str(hi) if lo == hi else f"{lo}-{hi}"] = n
    return out
