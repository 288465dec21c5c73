"""In-process runs: a recipe's segments without Ray, for inputs small enough that Ray's start costs more than
its parallelism gives.

Ray's start, its helper processes and a cold worker per task kind cost about 5 s and 6–8 CPU-seconds
on a two-core machine whatever the input's size (BENCHMARKS.md, issue 18); a sample of a few thousand
documents needs a fraction of that for the work itself. An in-process run executes the same segments
with the same operators, checkpoints, ``_SUCCESS`` records, fingerprints and manifest: only the
executor differs. :class:`LocalDataset` is the part of Ray Data's ``Dataset`` that the runner and the
whole-dataset steps use (``map_batches``, ``repartition``, ``groupby(...).map_groups``, ``union``,
``iter_batches``), applied eagerly to Arrow tables in this process, with Ray Data's batch semantics:
``batch_size=None`` hands over each block, ``batch_size=n`` regroups the blocks' rows into batches of
``n`` (the last one shorter), ``map_groups`` gets all the rows of one key, keys in sorted order.

Model stages run in this process too: torch uses this machine's CPUs (or its GPU, where the operator
finds one). Decisions and kept rows equal a Ray run's (tests/pipelines/test_local.py runs the
recipes both ways); shard files may be cut at other row counts, because Ray hands each write task
its own share of the rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.fs import resolve
from storage.run import RunDir
from storage.schema import READ_SCHEMA

logger = logging.getLogger(__name__)

#: the engines a run can use (``sluice curate --engine``, ``SLUICE_ENGINE``)
ENGINES = ("auto", "local", "ray")

#: ``auto`` runs in process when the inputs take at most this many bytes per CPU of the machine (and no Ray
#: is up or asked for): 256 MB on two CPUs, where an in-process run measured faster than Ray at 144 MB
#: (MinHash, 50k documents: 6.2 vs 14.6 s) and at 43 MB of WARC (the web recipe: 32.6 vs 38.5 s); with
#: more CPUs Ray's parallelism pays off sooner, so the bound shrinks with them (an assumption, not measured)
LOCAL_BYTES_TIMES_CPUS = 512 << 20


def local_max_bytes(cpus: int) -> int:
    """The input size up to which ``auto`` runs in process on a machine with ``cpus`` CPUs."""
    return max(16 << 20, LOCAL_BYTES_TIMES_CPUS // max(1, cpus))


class LocalDataset:
    """Arrow tables (blocks, in order) with the subset of Ray Data's ``Dataset`` that Sluice's steps use."""

    in_process = True

    def __init__(self, blocks: list[pa.Table]) -> None:
        self.blocks = list(blocks)

    def schema(self) -> pa.Schema:
        return self.blocks[0].schema if self.blocks else READ_SCHEMA

    def count(self) -> int:
        return sum(b.num_rows for b in self.blocks)

    def to_arrow_refs(self) -> list[pa.Table]:
        """The blocks themselves (Ray's version returns object references to them)."""
        return list(self.blocks)

    def iter_batches(self, batch_size: int | None = None, batch_format: str = "pyarrow") -> Iterator[pa.Table]:
        _check_format(batch_format)
        yield from _batches(self.blocks, batch_size)

    def select_columns(self, cols: list[str]) -> LocalDataset:
        return LocalDataset([b.select(cols) for b in self.blocks])

    def union(self, *others: LocalDataset) -> LocalDataset:
        return LocalDataset([b for d in (self, *others) for b in d.blocks])

    def repartition(
        self, num_blocks: int | None = None, target_num_rows_per_block: int | None = None, **_: Any
    ) -> LocalDataset:
        """Blocks of at most ``target_num_rows_per_block`` rows (or ``num_blocks`` even blocks), rows in order."""
        rows = self.count()
        if target_num_rows_per_block is None:
            target_num_rows_per_block = max(1, -(-rows // max(1, num_blocks or 1)))
        return LocalDataset(list(_batches(self.blocks, target_num_rows_per_block)))

    def map_batches(
        self,
        fn: Callable[..., pa.Table] | type,
        *,
        batch_format: str = "pyarrow",
        batch_size: int | None = None,
        fn_kwargs: dict[str, Any] | None = None,
        fn_constructor_kwargs: dict[str, Any] | None = None,
        **_resources: Any,  # concurrency, num_cpus, num_gpus: one process here
    ) -> LocalDataset:
        """``fn`` (or an instance of the class ``fn``, built once) applied to each batch, now."""
        _check_format(batch_format)
        call = fn(**(fn_constructor_kwargs or {})) if isinstance(fn, type) else fn
        kw = fn_kwargs or {}
        return LocalDataset([call(b, **kw) for b in _batches(self.blocks, batch_size)])

    def groupby(self, key: str, num_partitions: int | None = None) -> _Groups:
        return _Groups(self, key)


class _Groups:
    """``LocalDataset.groupby(key)``: ``map_groups`` calls ``fn`` once per key, in sorted key order."""

    def __init__(self, ds: LocalDataset, key: str) -> None:
        self.ds, self.key = ds, key

    def map_groups(self, fn: Callable[[pa.Table], pa.Table], *, batch_format: str = "pyarrow") -> LocalDataset:
        _check_format(batch_format)
        parts = [b for b in self.ds.blocks if b.num_rows]
        if not parts:
            return LocalDataset([])
        table = pa.concat_tables(parts, promote_options="permissive")
        table = table.take(pc.sort_indices(table, [(self.key, "ascending")]))
        keys = table.column(self.key)
        # run boundaries of the sorted key column
        change = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
        starts = [0, *(i + 1 for i in change.nonzero()[0].tolist())]
        ends = [*starts[1:], table.num_rows]
        return LocalDataset([fn(table.slice(a, b - a)) for a, b in zip(starts, ends)])


def _check_format(batch_format: str) -> None:
    if batch_format != "pyarrow":
        raise ValueError(f"in-process runs hand batches over as pyarrow tables, not {batch_format!r}")


def _batches(blocks: list[pa.Table], size: int | None) -> Iterator[pa.Table]:
    """Each block (``size`` None), or the blocks' rows regrouped into tables of ``size`` rows."""
    if size is None:
        yield from blocks
        return
    pending: list[pa.Table] = []
    held = 0
    for block in blocks:
        while block.num_rows:
            take = min(size - held, block.num_rows)
            pending.append(block.slice(0, take))
            held += take
            block = block.slice(take)
            if held == size:
                yield pa.concat_tables(pending, promote_options="permissive").combine_chunks()
                pending, held = [], 0
    if held:
        yield pa.concat_tables(pending, promote_options="permissive").combine_chunks()


class LocalEngine:
    """Runs a segment's reads, passes and writes in this process (see :class:`pipelines.segments.RayEngine`)."""

    name = "local"

    def read_input(self, source: Any) -> LocalDataset:
        blocks = [b for task in source.get_read_tasks(1) for b in task()]
        return LocalDataset(blocks)

    def read_checkpoint(self, ckdir: str, sub: str) -> LocalDataset:
        blocks = []
        for path in RunDir(ckdir).parquet(sub):
            fs, p = resolve(path)
            pf = pq.ParquetFile(fs.open_input_file(p))
            blocks += [pf.read_row_group(rg) for rg in range(pf.num_row_groups)]
        return LocalDataset(blocks)

    def write(self, ds: LocalDataset, sink: Any) -> None:
        sink.write_now(ds.blocks)

    def lost_workers(self) -> set[str] | None:
        return set()  # one process: a crash ends the run


def requested_engine(requested: str | None) -> str:
    """The engine asked for: ``requested`` (``--engine``), else ``SLUICE_ENGINE``, else ``auto``; checked."""
    asked = requested or os.environ.get("SLUICE_ENGINE") or "auto"
    if asked not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {asked!r}")
    return asked


def choose_engine(requested: str | None, input_bytes: int) -> str:
    """``local`` or ``ray`` for a run: what was asked (``--engine``, else ``SLUICE_ENGINE``), or for ``auto``
    in process when the inputs take at most :func:`local_max_bytes` and no Ray cluster is named
    (``RAY_ADDRESS``), up in this process, or left running here by ``ray start``."""
    import sys

    asked = requested_engine(requested)
    if asked != "auto":
        return asked
    ray = sys.modules.get("ray")
    if os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()) or _started_cluster():
        return "ray"
    from pipelines.cluster import local_cpus

    return "local" if input_bytes <= local_max_bytes(local_cpus()) else "ray"


def _started_cluster() -> bool:
    """Whether ``ray start`` left a cluster on this machine that ``ray.init()`` joins by default (a run there
    is one the user asked to see in that cluster). Read through Ray's private API: unknown counts as no."""
    try:
        from ray._private.services import find_bootstrap_address

        return find_bootstrap_address(None) is not None
    except Exception as e:  # a private API: degrade to "no cluster"
        logger.debug("cannot tell whether `ray start` ran here: %s", e)
        return False
