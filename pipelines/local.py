"""In-process runs: a recipe's segments without Ray, for inputs small enough that Ray's start costs more than
its parallelism gives.

Ray's start, its helper processes and a cold worker per task kind cost seconds whatever the input's size:
on a two-core machine the demo recipe takes 14.1 s on Ray and 4.9 s in process, MinHash over 25k
documents 11.2 against 4.7 CPU-seconds (BENCHMARKS.md, issue 18); a sample of a few thousand documents
needs a fraction of that for the work itself. An in-process run executes the same segments
with the same operators, checkpoints, ``_SUCCESS`` records, fingerprints and manifest: only the
executor differs. :class:`LocalDataset` is the part of Ray Data's ``Dataset`` that the runner and the
whole-dataset steps use (``map_batches``, ``repartition``, ``groupby(...).map_groups``, ``union``,
``iter_batches``), applied eagerly to Arrow tables in this process, with Ray Data's batch semantics, so
that operators see the same batches: ``map_batches(batch_size=None)`` runs fused with the read (or map)
before it, on each block that task made; what leaves a task is merged into blocks as Ray's output buffer
merges them (up to 128 MB); ``map_batches(batch_size=n)`` bundles whole output blocks until they hold
``n`` rows (Ray's ``EstimateSize`` rebundling) and cuts each bundle into batches of ``n`` rows and a shorter
last one; ``map_groups`` gets all the rows of one key, keys in sorted order.

Model stages run in this process too: torch uses this machine's CPUs (or its GPU, where the operator
finds one). Decisions, kept rows, their order and model scores equal a Ray run's (tests/pipelines/test_local.py
runs recipes both ways); shard files may be cut at other row counts, because Ray hands each write task its
own share of the rows. A read task or checkpoint file over 128 MB in memory is cut into blocks where Ray's
output buffer may cut it elsewhere; a model stage's batches (and so its scores, in their last digits) can
then differ.

What a whole-dataset step shares with the row-wise pass goes through :func:`operators.base.share`, which
wraps it in a :class:`~operators.base.LocalRef` here: operators are cached per process by a key that
includes what they were given, and a run's tables must never be mistaken for another run's. After a
run, :meth:`LocalEngine.finish` drops the operators it built but the newest model chain.
"""

from __future__ import annotations

import functools
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
#: (MinHash, 50k documents: 6.2 vs 14.6 s) and at 43 MB of WARC (the web recipe: 32.6 s, against 38.5 s in an
#: earlier Ray run); with
#: more CPUs Ray's parallelism pays off sooner, so the bound shrinks with them (an assumption, not measured)
LOCAL_BYTES_TIMES_CPUS = 512 << 20


def local_max_bytes(cpus: int) -> int:
    """The input size up to which ``auto`` runs in process on a machine with ``cpus`` CPUs."""
    return max(16 << 20, LOCAL_BYTES_TIMES_CPUS // max(1, cpus))


class LocalDataset:
    """Arrow tables, in order, with the subset of Ray Data's ``Dataset`` that Sluice's steps use.

    The tables are held in groups, one per Ray task that would have made them: a task-based
    ``map_batches(batch_size=None)`` runs fused with what made its input (a read, a task map), block by
    block within each group, as Ray fuses them; anything that takes a task's output (a bundled map, a
    shuffle, the caller) sees each group merged into blocks as Ray's output buffer merges them.
    """

    in_process = True

    def __init__(self, blocks: list[pa.Table], groups: list[list[pa.Table]] | None = None) -> None:
        self.groups = groups if groups is not None else [[b] for b in blocks]

    @functools.cached_property
    def blocks(self) -> list[pa.Table]:
        """The output blocks: each group merged as one task's output (:func:`_as_ray_blocks`), once."""
        return [b for g in self.groups for b in _as_ray_blocks(g)]

    @classmethod
    def of_tasks(cls, groups: list[list[pa.Table]]) -> LocalDataset:
        return cls([], groups)

    def schema(self) -> pa.Schema:
        blocks = self.blocks
        return blocks[0].schema if blocks else READ_SCHEMA

    def count(self) -> int:
        return sum(b.num_rows for g in self.groups for b in g)

    def to_arrow_refs(self) -> list[pa.Table]:
        """The output blocks themselves (Ray's version returns object references to them)."""
        return self.blocks

    def iter_batches(self, batch_size: int | None = None, batch_format: str = "pyarrow") -> Iterator[pa.Table]:
        _check_format(batch_format)
        yield from _regroup(self.blocks, batch_size)

    def select_columns(self, cols: list[str]) -> LocalDataset:
        return LocalDataset.of_tasks([[b.select(cols) for b in g] for g in self.groups])

    def union(self, *others: LocalDataset) -> LocalDataset:
        return LocalDataset.of_tasks([g for d in (self, *others) for g in d.groups])

    def repartition(
        self,
        num_blocks: int | None = None,
        target_num_rows_per_block: int | None = None,
        *,
        strict: bool = False,
        shuffle: bool = False,
        keys: list[str] | None = None,
        sort: bool = False,
    ) -> LocalDataset:
        """Blocks of at most ``target_num_rows_per_block`` rows (or ``num_blocks`` even blocks), rows in order
        (``strict`` or not: every block but the last is full)."""
        if shuffle or keys or sort:
            raise ValueError("in-process runs repartition by row count only (no shuffle, keys or sort)")
        rows = self.count()
        if target_num_rows_per_block is None:
            target_num_rows_per_block = max(1, -(-rows // max(1, num_blocks or 1)))
        return LocalDataset(list(_regroup(self.blocks, target_num_rows_per_block)))

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
        """``fn`` (or an instance of the class ``fn``, built once) applied now: without ``batch_size`` to each
        block of each group (fused, as Ray runs a task map); with it to the output blocks bundled until they
        hold ``batch_size`` rows and cut into batches of that many rows, one group per bundle (one Ray task)."""
        _check_format(batch_format)
        call = fn(**(fn_constructor_kwargs or {})) if isinstance(fn, type) else fn
        kw = fn_kwargs or {}
        if batch_size is None:
            return LocalDataset.of_tasks([[call(b, **kw) for b in g if b.num_rows] for g in self.groups])
        return LocalDataset.of_tasks(
            [
                [call(b, **kw) for b in _regroup([_concat(bundle)], batch_size)]
                for bundle in _bundles(self.blocks, batch_size)
            ]
        )

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
        table = table.take(pc.sort_indices(table, [(self.key, "ascending")]))  # nulls last, one group
        keys = table.column(self.key)
        # run boundaries of the sorted key column: a value differs from the previous one (null counts as a value)
        cur, prev = keys.slice(1), keys.slice(0, len(keys) - 1)
        same_null = pc.and_(pc.is_null(cur), pc.is_null(prev))
        change = pc.if_else(same_null, False, pc.fill_null(pc.not_equal(cur, prev), True))
        starts = [0, *(i + 1 for i in change.to_numpy(zero_copy_only=False).nonzero()[0].tolist())]
        ends = [*starts[1:], table.num_rows]
        return LocalDataset([fn(table.slice(s, e - s)) for s, e in zip(starts, ends)])


def _check_format(batch_format: str) -> None:
    if batch_format != "pyarrow":
        raise ValueError(f"in-process runs hand batches over as pyarrow tables, not {batch_format!r}")


#: Ray Data's default target_max_block_size: a task's output rows are one block up to this size
RAY_BLOCK_BYTES = 128 << 20


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def _as_ray_blocks(tables: list[pa.Table]) -> list[pa.Table]:
    """One task's output as Ray's output buffer makes it: merged into blocks of up to :data:`RAY_BLOCK_BYTES`."""
    out: list[pa.Table] = []
    pending: list[pa.Table] = []
    size = 0
    for t in tables:
        if not t.num_rows:
            continue
        if pending and size + t.nbytes > RAY_BLOCK_BYTES:
            out.append(_concat(pending))
            pending, size = [], 0
        pending.append(t)
        size += t.nbytes
    if pending:
        out.append(_concat(pending))
    return out


def _bundles(blocks: list[pa.Table], rows: int) -> Iterator[list[pa.Table]]:
    """Whole non-empty blocks gathered until they hold at least ``rows`` rows (the last bundle may hold fewer)."""
    bundle: list[pa.Table] = []
    held = 0
    for b in blocks:
        if not b.num_rows:
            continue
        bundle.append(b)
        held += b.num_rows
        if held >= rows:
            yield bundle
            bundle, held = [], 0
    if bundle:
        yield bundle


def _regroup(blocks: list[pa.Table], size: int | None) -> Iterator[pa.Table]:
    """Each non-empty block (``size`` None), or the blocks' rows regrouped into tables of ``size`` rows (the last
    one shorter); like Ray Data's batcher, an empty block is never handed over."""
    if size is None:
        yield from (b for b in blocks if b.num_rows)
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
                yield _concat(pending)
                pending, held = [], 0
    if held:
        yield _concat(pending)


class LocalEngine:
    """Runs a segment's reads, passes and writes in this process (see :class:`pipelines.segments.RayEngine`)."""

    name = "local"

    def read_input(self, source: Any) -> LocalDataset:
        return LocalDataset.of_tasks([list(task()) for task in source.get_read_tasks(1)])

    def read_checkpoint(self, ckdir: str, sub: str) -> LocalDataset:
        groups = []  # one read task per file, a block per row group (storage.shards.ParquetFiles)
        for path in RunDir(ckdir).parquet(sub):
            fs, p = resolve(path)
            with fs.open_input_file(p) as f:
                pf = pq.ParquetFile(f)
                groups.append([pf.read_row_group(rg) for rg in range(pf.num_row_groups)])
        return LocalDataset.of_tasks(groups)

    def write(self, ds: LocalDataset, sink: Any) -> None:
        sink.write_now(ds.blocks)

    def start(self) -> int:
        """Nothing to start; 0 GPUs for the runner (in process, model operators find a GPU themselves)."""
        return 0

    def describe(self) -> dict:
        from pipelines.cluster import describe_local

        return describe_local()

    def lost_workers(self) -> set[str] | None:
        return set()  # one process: a crash ends the run

    def finish(self) -> None:
        """After a run: drop the operators built for it (those of whole-dataset stages hold its tables); the
        newest model chain stays loaded for the next run in this process."""
        from pipelines.chain import forget_chains

        forget_chains(keep_models=True)


def requested_engine(requested: str | None) -> str:
    """The engine asked for: ``requested`` (``--engine``), else ``SLUICE_ENGINE``, else ``auto``; checked."""
    asked = requested or os.environ.get("SLUICE_ENGINE") or "auto"
    if asked not in ENGINES:
        where = "--engine" if requested else "SLUICE_ENGINE"
        raise ValueError(f"{where}: engine must be one of {', '.join(ENGINES)}, got {asked!r}")
    return asked


#: file endings whose bytes grow several times in memory (compressed text, Parquet): counted 4 times
COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".xz", ".parquet")
EXPANSION = 4


def input_bytes(inputs: dict[str, list]) -> int:
    """The inputs' size for choosing an engine (``{path: [size, mtime]}``, unknown sizes as 0): compressed
    files count :data:`EXPANSION` times their size, since an in-process run holds a segment's rows in memory."""
    return sum(
        (size or 0) * (EXPANSION if path.lower().endswith(COMPRESSED) else 1) for path, (size, _) in inputs.items()
    )


def choose_engine(requested: str | None, input_bytes: int) -> str:
    """``local`` or ``ray`` for a run: what was asked (``--engine``, else ``SLUICE_ENGINE``), or for ``auto``
    in process when the inputs take at most :func:`local_max_bytes` and no Ray cluster is named
    (``RAY_ADDRESS``), up in this process, or left running here by ``ray start``."""
    asked = requested_engine(requested)
    if asked != "auto":
        return asked
    from pipelines.cluster import local_cpus, ray_up

    if os.environ.get("RAY_ADDRESS") or ray_up() or _started_cluster():
        return "ray"

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
