"""Shard writer and reader: hive-partitioned zstd Parquet, written atomically, sized to a target."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import BlockMetadata

from storage.fs import resolve
from storage.run import atomic_write
from storage.schema import REASON, STAGE

logger = logging.getLogger(__name__)

TMP_DIR = "_tmp"
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")


@dataclass
class ShardFile:
    """One written shard, as recorded in the manifest (``path`` relative to the run directory)."""

    path: str
    partition: str
    rows: int
    bytes: int
    sha256: str
    task: int = 0
    seq: int = 0


def write_table_atomic(fs, path: str, table: pa.Table) -> tuple[int, str]:
    """Write ``table`` as zstd Parquet to ``path`` via a temporary name; return (bytes, sha256)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=8192)
    buf = sink.getvalue()
    atomic_write(fs, path, buf)
    return buf.size, hashlib.sha256(memoryview(buf)).hexdigest()


class Layout:
    """Routes rows to directories. ``split`` yields (directory, table-to-write) pairs."""

    def split(self, table: pa.Table) -> Iterable[tuple[str, pa.Table]]:
        raise TypeError("use a concrete layout")


def _conform(table: pa.Table, schema: pa.Schema | None, drop: tuple[str, ...]) -> pa.Table:
    table = table.drop_columns([c for c in drop if c in table.column_names])
    if schema is None:
        return table
    fields = [f for f in schema if f.name not in drop]
    extra = [table.schema.field(c) for c in table.column_names if c not in schema.names]
    fields += extra
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type) for f in fields]
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def _groups(table: pa.Table, col: str) -> Iterable[tuple[str, pa.Table]]:
    values = table.column(col)
    for value in sorted(set(values.to_pylist())):
        yield value, table.filter(pc.equal(values, value))


class RunLayout(Layout):
    """The run's final layout: kept rows to ``shards/domain=<d>/``, removed rows to ``removed/stage=<s>/``.

    Kept shards drop the bookkeeping columns; removed rows keep ``reason``, ``dup_of``,
    ``raw`` and ``error``. Partition columns live in the directory names (hive style).
    """

    def __init__(self, kept_drop: tuple[str, ...], schema: pa.Schema | None = None) -> None:
        self.kept_drop = kept_drop
        self.schema = schema

    def split(self, table: pa.Table) -> Iterable[tuple[str, pa.Table]]:
        removed = pc.is_valid(table.column(REASON))
        kept = table.filter(pc.invert(removed))
        for value, part in _groups(kept, "domain"):
            yield f"shards/domain={value}", _conform(part, self.schema, (*self.kept_drop, "domain"))
        gone = table.filter(removed)
        for value, part in _groups(gone, STAGE):
            yield f"removed/stage={value}", _conform(part, self.schema, (STAGE,))


class CheckpointLayout(Layout):
    """A stage checkpoint: live rows to ``live/``, removed rows to ``removed/`` (all columns)."""

    def __init__(self, schema: pa.Schema | None = None) -> None:
        self.schema = schema

    def split(self, table: pa.Table) -> Iterable[tuple[str, pa.Table]]:
        removed = pc.is_valid(table.column(REASON))
        for name, mask in (("live", pc.invert(removed)), ("removed", removed)):
            part = table.filter(mask)
            if part.num_rows:
                yield name, _conform(part, self.schema, ())


class ShardSink(Datasink):
    """A Ray Data sink writing zstd Parquet ``<root>/<dir>/part-NNNNN.parquet`` files.

    A :class:`Layout` routes each block's rows to directories. Write tasks buffer rows per
    directory and roll a file when the buffer's estimated Parquet size reaches
    ``target_bytes``; files land under ``<root>/_tmp/`` (through a temporary name). When
    every task has succeeded the driver renames them into place in (directory, task,
    sequence) order, numbering after existing parts: a crashed write never leaves a file
    that looks finished, and names are deterministic.

    Args:
        root: directory (local path or URI) that receives the files.
        layout: routes rows to sub-directories.
        target_bytes: target file size in bytes.
        rows_per_write: rows Ray Data hands to one write task (None: Ray chooses).
    """

    def __init__(self, root: str, layout: Layout, target_bytes: int, rows_per_write: int | None = None) -> None:
        self.root = root.rstrip("/")
        self.layout = layout
        self.target_bytes = int(target_bytes)
        self.rows_per_write = rows_per_write
        self.files: list[ShardFile] = []

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_write

    def get_name(self) -> str:
        return "ShardSink"

    def write(self, blocks, ctx) -> list[dict]:
        fs, root = resolve(self.root)
        buffers: dict[str, list[pa.Table]] = {}
        sizes: dict[str, int] = {}
        seqs: dict[str, int] = {}
        ratio = 3.0  # in-memory bytes per Parquet byte; refined after each file
        out: list[dict] = []

        def flush(d: str) -> None:
            nonlocal ratio
            table = pa.concat_tables(buffers.pop(d), promote_options="default")
            mem = sizes.pop(d)
            seq = seqs.get(d, 0)
            seqs[d] = seq + 1
            task = ctx.task_idx
            name = f"{TMP_DIR}/{task:06d}-{seq:05d}-{uuid.uuid4().hex[:8]}.parquet"
            nbytes, digest = write_table_atomic(fs, f"{root}/{name}", table)
            ratio = max(1.0, mem / max(nbytes, 1))
            out.append(asdict(ShardFile(name, d, table.num_rows, nbytes, digest, task, seq)))

        for block in blocks:
            if block.num_rows == 0:
                continue
            for d, part in self.layout.split(block):
                per_row = max(1, part.nbytes // max(part.num_rows, 1))
                while part.num_rows:  # fill the open file up to the target, roll, repeat
                    room = max(1, int((self.target_bytes * ratio - sizes.get(d, 0)) // per_row))
                    head, part = part.slice(0, room), part.slice(room)
                    buffers.setdefault(d, []).append(head)
                    sizes[d] = sizes.get(d, 0) + head.nbytes
                    if sizes[d] >= self.target_bytes * ratio:
                        flush(d)
        for d in sorted(buffers):
            flush(d)
        return out

    def write_now(self, tables: Iterable[pa.Table]) -> list[ShardFile]:
        """Write ``tables`` in this process (no Ray), as one task, and commit the files."""
        returns = self.write(tables, _LocalTask())
        return self.commit([returns])

    def on_write_complete(self, write_result) -> None:
        self.commit(write_result.write_returns)

    def commit(self, write_returns: list[list[dict]]) -> list[ShardFile]:
        """Rename the written temporary files into place; return their records."""
        fs, root = resolve(self.root)
        records = [ShardFile(**r) for task in write_returns for r in task]
        records.sort(key=lambda r: (r.partition, r.task, r.seq))
        next_part: dict[str, int] = {}
        for r in records:
            d = r.partition
            if d not in next_part:
                next_part[d] = _next_part_number(fs, f"{root}/{d}")
            final = f"{d}/part-{next_part[d]:05d}.parquet"
            next_part[d] += 1
            fs.create_dir(f"{root}/{d}", recursive=True)
            fs.move(f"{root}/{r.path}", f"{root}/{final}")
            r.path = final
            self.files.append(r)
        from storage.run import RunDir

        RunDir(self.root).delete(TMP_DIR)  # leftovers of retried tasks; only Sluice's temporary names
        return records


class _LocalTask:
    task_idx = 0


def _next_part_number(fs, directory: str) -> int:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    nums = [int(m.group(1)) for i in infos if (m := PART_RE.match(i.base_name))]
    return max(nums) + 1 if nums else 0


def read_shards(root: str, columns: list[str] | None = None) -> pa.Table:
    """Read a hive-partitioned shard directory into one table (partition column restored)."""
    fs, path = resolve(root)
    ds = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive", exclude_invalid_files=True)
    return ds.to_table(columns=columns)


class ParquetFiles(Datasource):
    """Ray Data source over an explicit, ordered list of Parquet files: one read task per
    file, one block per row group, so a re-read yields the same blocks in the same order."""

    def __init__(self, files: list[str]) -> None:
        self.files = list(files)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        def make(path: str):
            def read() -> Iterable[pa.Table]:
                fs, p = resolve(path)
                pf = pq.ParquetFile(fs.open_input_file(p))
                for rg in range(pf.num_row_groups):
                    yield pf.read_row_group(rg)

            return read

        return [
            ReadTask(make(f), BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(f,)))
            for f in self.files
        ]
