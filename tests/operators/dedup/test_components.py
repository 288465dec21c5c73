"""Connected components over spilled edges, survivors, histograms."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from operators.dedup.components import (
    EDGE_SCHEMA,
    ParquetSpill,
    cluster_table,
    connected_components,
    distinct_edges,
    size_histogram,
)


def _spill(tmp_path, pairs, name="e.parquet", chunk=3):
    sp = ParquetSpill(str(tmp_path / name), EDGE_SCHEMA)
    for i in range(0, len(pairs), chunk):  # several row groups
        part = pairs[i : i + chunk]
        sp.write(pa.table({"a": [p[0] for p in part], "b": [p[1] for p in part]}))
    return sp.close()


def _groups(nodes, root):
    out: dict[int, set] = {}
    for n, r in zip(nodes.tolist(), root.tolist()):
        out.setdefault(r, set()).add(n)
    return sorted(sorted(g) for g in out.values())


def test_chains_and_stars_collapse(tmp_path):
    # a long chain given in scrambled order, a star, and a lone pair
    chain = [(i, i + 1) for i in range(100, 140)]
    rng = np.random.default_rng(0)
    chain = [chain[i] for i in rng.permutation(len(chain))]
    star = [(7, k) for k in (20, 30, 40)]
    path = _spill(tmp_path, [*chain, *star, (-5, 9)])
    nodes, root = connected_components(path, chunk_rows=4)
    assert _groups(nodes, root) == [[-5, 9], [7, 20, 30, 40], list(range(100, 141))]
    assert np.all(root <= np.arange(len(nodes)))  # the root is the smallest member


def test_components_match_scipy_on_a_random_graph(tmp_path):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_cc

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 3000, 2500) * 11, rng.integers(0, 3000, 2500) * 11
    path = _spill(tmp_path, list(zip(a.tolist(), b.tolist())), chunk=700)
    nodes, root = connected_components(path, chunk_rows=500)
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    k, labels = scipy_cc(coo_matrix((np.ones(len(a)), (ia, ib)), shape=(len(nodes),) * 2), directed=False)
    assert len(set(root.tolist())) == k
    pairs = {(int(r), int(lab)) for r, lab in zip(root, labels)}
    assert len(pairs) == k  # the same partition


def test_distinct_edges(tmp_path):
    path = _spill(tmp_path, [(1, 2), (1, 2), (2, 3), (1, 2)])
    assert distinct_edges(path, str(tmp_path / "d.parquet")) == 2


def test_survivor_rules_and_stable_numbering():
    nodes = np.array([10, 20, 30, 40, 50], dtype=np.int64)
    root = np.array([0, 0, 0, 3, 3], dtype=np.int64)
    info = pl.DataFrame(
        {
            "uid": [50, 40, 30, 20, 10, 10],  # order and repeats do not matter
            "id": ["e", "d", "c", "b", "a", "a"],
            "score": [None, 1.0, 0.5, 0.9, float("nan"), float("nan")],
        }
    )
    lowest = cluster_table(nodes, root, info.with_columns(pl.lit(None, pl.Float64).alias("score")))
    assert lowest.column("survivor").to_pylist() == ["a", "a", "a", "d", "d"]
    assert lowest.column("cluster").to_pylist() == [0, 0, 0, 1, 1]
    assert lowest.column("size").to_pylist() == [3, 3, 3, 2, 2]
    best = cluster_table(nodes, root, info)  # highest score; NaN and null lose
    assert best.column("survivor").to_pylist() == ["b", "b", "b", "d", "d"]
    assert best.column("cluster").to_pylist() == [0, 0, 0, 1, 1]  # numbered by survivor id
    tie = info.with_columns(pl.lit(1.0).alias("score"))
    assert cluster_table(nodes, root, tie).column("survivor").to_pylist()[:3] == ["a", "a", "a"]
    assert cluster_table(np.zeros(0, np.int64), np.zeros(0, np.int64), info).num_rows == 0
    with pytest.raises(RuntimeError, match="ids must be unique"):
        cluster_table(nodes, root, info.filter(pl.col("uid") != 30))


def test_size_histogram():
    assert size_histogram(np.array([2, 2, 3, 4, 5, 9, 17])) == {"2": 2, "3-4": 2, "5-8": 1, "9-16": 1, "17-32": 1}
    assert size_histogram(np.zeros(0, np.int64)) == {}
