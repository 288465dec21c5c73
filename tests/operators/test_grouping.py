"""The first pass of exact dedup and the id check: grouped in the driver or by Ray, the same table."""

from __future__ import annotations

import pyarrow as pa

from operators.base import StageContext
from operators.grouping import repeated


def _sorted(t: pa.Table) -> list[dict]:
    return sorted(t.to_pylist(), key=lambda r: r["k"])


def test_driver_and_ray_grouping_agree(ray_session):
    ray = ray_session
    keys = [f"k{i % 37}" for i in range(500)] + [f"solo{i}" for i in range(50)]
    values = [f"v{(i * 7919) % 1000:04d}" for i in range(len(keys))]
    blocks = [pa.table({"k": keys[s : s + 100], "v": values[s : s + 100]}) for s in range(0, len(keys), 100)]
    ds = ray.data.from_arrow(blocks)
    small = repeated(ds, "k", "v", StageContext(num_partitions=2, rows=len(keys)))
    large = repeated(ds, "k", "v", StageContext(num_partitions=3, rows=None))
    assert _sorted(small) == _sorted(large)
    assert small.num_rows == 37 and set(small.column("n").to_pylist()) <= {13, 14}
    expect = {k: min(v for kk, v in zip(keys, values) if kk == k) for k in set(keys) if k.startswith("k")}
    assert {r["k"]: r["first"] for r in small.to_pylist()} == expect
    assert small.schema == pa.schema([("k", pa.string()), ("n", pa.int64()), ("first", pa.string())])


def test_nothing_repeated_or_nothing_at_all(ray_session):
    ray = ray_session
    ds = ray.data.from_arrow(pa.table({"k": ["a", "b"], "v": ["1", "2"]}))
    assert repeated(ds, "k", "v", StageContext(rows=2)).num_rows == 0
    assert repeated(ds.filter(expr="k == 'z'"), "k", "v", StageContext(rows=0)).num_rows == 0
