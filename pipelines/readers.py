"""Input readers: JSONL (plain/.gz/.zst), Parquet, text directories and WARC files as one Ray Data source.

Every record becomes a row of ``storage.schema.READ_SCHEMA``. Malformed records are not
dropped: they become rows with ``stage="input"``, a ``reason`` (``input_bad_json``,
``input_bad_utf8``, ``input_not_object``, ``input_missing_text``, ``input_text_not_string``,
``input_empty_text``, ``input_unreadable``) and the raw bytes in ``raw``. A file that breaks
part-way (a truncated gzip) keeps the records read before the break and adds one
``input_truncated`` row saying how many were read and that the rest of the file is lost.
WARC files (:mod:`pipelines.warc`) give one row per record: HTML responses are documents, every
other record a removed row with its own reason.
Files left out by an input's ``exclude`` patterns, and version-control folders, become one
``input_excluded`` row each. With ``on_duplicate_id: remove``, a later record of a file
repeating an id seen earlier in the same file becomes ``input_duplicate_id`` (ids repeated
across files are resolved by the ``input_ids`` stage).

Every other field of a record is input metadata (:mod:`pipelines.metadata`): before the read,
:meth:`InputDatasource.scan_metadata` fixes one set of typed metadata columns for the run, and
every block the reader emits is ``READ_SCHEMA`` followed by those columns (null where a record,
or a malformed line, has no such field). A record's id is its ``id_field`` (by default its own
``id``) when it has one, else a hash of source and row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipelines.metadata import (
    SCAN_CHUNK,
    FieldMap,
    FileFields,
    RunMetadata,
    plan_metadata,
    record_arrays,
    table_arrays,
)
from storage.fs import detect_format, list_input, resolve
from storage.schema import INPUT_STAGE, READ_SCHEMA, make_id

logger = logging.getLogger(__name__)

ROWS_PER_BLOCK = 2048
TEXT_FILES_PER_TASK = 256


@dataclass(frozen=True)
class FileTask:
    """One file to read, with the options of the input it came from."""

    uri: str
    path: str
    domain: str
    format: str
    text_field: str
    id_field: str | None
    dedupe_ids: bool = False  # later repeats of an id within this file -> input_duplicate_id
    excluded: str | None = None  # why the file is left out: it becomes one input_excluded row
    tolerate_errors: bool = False  # its input says `on_input_error: continue`
    fields: FieldMap = field(default_factory=FieldMap)  # which record fields are metadata, under which columns
    input: int = 0  # index of its recipe input
    max_record_bytes: int = 10 << 20  # WARC: a larger response body is input_too_large, never read into memory


class _Rows:
    """Accumulates rows and emits tables of ROWS_PER_BLOCK rows: READ_SCHEMA, then ``meta``'s columns."""

    def __init__(self, task: FileTask, source: str, meta: RunMetadata | None = None) -> None:
        self.task, self.source = task, source
        self.meta = meta if meta is not None and len(meta.schema) else None
        self.cols: dict[str, list] = {f.name: [] for f in READ_SCHEMA}
        self.records: list[dict | None] = []
        self.count = 0
        self.seen: set[str] | None = set() if task.dedupe_ids else None

    def add(
        self,
        row: int,
        rid: str | None,
        text: str | None,
        reason: str | None = None,
        raw: bytes | None = None,
        error: str | None = None,
        record: dict | None = None,
    ) -> None:
        c = self.cols
        dup = None
        if rid is not None and self.seen is not None and reason is None:
            if rid in self.seen:
                reason, dup = "input_duplicate_id", rid
            self.seen.add(rid)
        c["id"].append(rid if rid is not None else make_id(self.source, row))
        c["text"].append(text)
        c["domain"].append(self.task.domain)
        c["source"].append(self.source)
        c["reason"].append(reason)
        c["stage"].append(INPUT_STAGE if reason else None)
        c["dup_of"].append(dup)
        c["raw"].append(raw)
        c["error"].append(error)
        self.records.append(record)
        self.count += 1

    def full(self) -> bool:
        return len(self.cols["id"]) >= ROWS_PER_BLOCK

    def flush(self, metadata: list[pa.Array] | None = None) -> pa.Table:
        """The rows added since the last flush; ``metadata`` gives their metadata columns (Parquet),
        else they are built from the records passed to :meth:`add`."""
        table = pa.table(self.cols, schema=READ_SCHEMA)
        if self.meta is not None:
            arrays = metadata if metadata is not None else record_arrays(self.records, self.meta)
            table = pa.Table.from_arrays([*table.columns, *arrays], schema=self.meta.read_schema)
        self.cols = {f.name: [] for f in READ_SCHEMA}
        self.records = []
        return table


def _text_reason(value: object) -> str | None:
    if value is None:
        return "input_missing_text"
    if not isinstance(value, str):
        return "input_text_not_string"
    if not value.strip():
        return "input_empty_text"
    return None


def _read_jsonl(task: FileTask, fs, meta: RunMetadata | None = None) -> Iterator[pa.Table]:
    rows = _Rows(task, task.uri, meta)
    columns: dict[str, str | None] | None = {} if rows.meta is not None else None
    try:
        with fs.open_input_stream(task.path, compression="detect") as f:
            for n, line in enumerate(_lines(f)):
                if line.strip():
                    _parse_line(rows, task, n, line, columns)
                if rows.full():
                    yield rows.flush()
    except (OSError, ValueError, EOFError):
        yield rows.flush()  # keep what was read before the stream broke
        raise
    yield rows.flush()


def _decode(line: bytes) -> tuple[dict | None, str | None]:
    """A JSONL line as a record, or (None, the reason it is not one)."""
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "input_bad_utf8"
    try:
        obj = json.loads(s)
    except ValueError:
        return None, "input_bad_json"
    if not isinstance(obj, dict):
        return None, "input_not_object"
    return obj, None


def _kept(obj: dict, fields: FieldMap, cache: dict[str, str | None], rename: bool) -> dict:
    """The record's metadata fields, under their column names (``rename``) or their own."""
    out = {}
    for k, v in obj.items():
        col = cache[k] if k in cache else cache.setdefault(k, fields.column(k))
        if col is not None:
            out[col if rename else k] = v
    return out


def _parse_line(rows: _Rows, task: FileTask, n: int, line: bytes, columns: dict | None = None) -> None:
    obj, why = _decode(line)
    if obj is None:
        rows.add(n, None, None, why, line)
        return
    rid = obj.get(task.id_field) if task.id_field else None
    text = obj.get(task.text_field)
    reason = _text_reason(text)
    record = _kept(obj, task.fields, columns, True) if columns is not None else None
    rows.add(
        n,
        None if rid is None else str(rid),
        text if reason is None else None,
        reason,
        line if reason else None,
        record=record,
    )


def _lines(f, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Split a binary stream on b'\\n' without decoding (bad bytes must survive)."""
    rest = b""
    while True:
        data = f.read(chunk)
        if not data:
            break
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        yield from (p.rstrip(b"\r") for p in parts)
    if rest:
        yield rest.rstrip(b"\r")


def _read_text(task: FileTask, fs, meta: RunMetadata | None = None) -> Iterator[pa.Table]:
    rows = _Rows(task, task.uri, meta)
    with fs.open_input_stream(task.path, compression="detect") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        rows.add(0, None, None, "input_bad_utf8", data)
    else:
        reason = _text_reason(text)
        rows.add(0, None, text if reason is None else None, reason, data if reason else None)
    yield rows.flush()


def _read_parquet(task: FileTask, fs, meta: RunMetadata | None = None) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(fs.open_input_file(task.path))
    names = pf.schema_arrow.names
    if task.text_field not in names:
        raise ValueError(f"{task.uri}: no column {task.text_field!r} (columns: {', '.join(names)})")
    has_id = bool(task.id_field) and task.id_field in names
    cols = [task.text_field] + ([task.id_field] if has_id else [])
    rows = _Rows(task, task.uri, meta)
    if rows.meta is not None:
        cols += [n for n in names if task.fields.column(n) is not None]
    row = 0
    for rg in range(pf.num_row_groups):
        group = pf.read_row_group(rg, columns=cols)
        for start in range(0, group.num_rows, ROWS_PER_BLOCK):
            t = group.slice(start, ROWS_PER_BLOCK)
            texts = t.column(task.text_field).to_pylist()
            ids = t.column(task.id_field).to_pylist() if has_id else [None] * len(texts)
            for text, rid in zip(texts, ids):
                reason = _text_reason(text)
                raw = None if reason is None or text is None else repr(text).encode()
                rows.add(row, None if rid is None else str(rid), text if reason is None else None, reason, raw)
                row += 1
            yield rows.flush(table_arrays(t, task.fields, rows.meta) if rows.meta is not None else None)


def _read_warc(task: FileTask, fs, meta: RunMetadata | None = None) -> Iterator[pa.Table]:
    from pipelines.warc import read_warc  # FastWARC is imported only by runs that read WARC files

    return read_warc(task, fs, meta)


READERS = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet, "warc": _read_warc}


INPUT_ERRORS = ("input_unreadable", "input_truncated")


def read_file(task: FileTask, stats=None, meta: RunMetadata | None = None) -> Iterator[pa.Table]:
    """Read one file into blocks of READ_SCHEMA plus ``meta``'s columns (none without ``meta``); a
    file that cannot be opened becomes one removed row, one that breaks part-way keeps what was
    read plus one ``input_truncated`` row."""
    fs, _ = resolve(task.uri)
    n = 0
    try:
        if task.excluded is not None:
            rows = _Rows(task, task.uri, meta)
            rows.add(0, None, None, "input_excluded", error=task.excluded)
            n = 1
            yield rows.flush()
        else:
            for block in READERS[task.format](task, fs, meta):
                n += block.num_rows
                if block.num_rows:
                    yield block
    except (OSError, ValueError, EOFError) as e:
        rows = _Rows(task, task.uri, meta)
        if n:  # a stream that broke mid-way (truncated gzip…): record it, keep what was read
            logger.warning("%s: read stopped after %d records: %s", task.uri, n, e)
            msg = f"read stopped after {n} records; the rest of the file is lost: {type(e).__name__}: {e}"
            rows.add(n, None, None, "input_truncated", error=msg)
        else:
            rows.add(n, None, None, "input_unreadable", error=f"{type(e).__name__}: {e}")
        n += 1
        yield rows.flush()
    if stats is not None:
        from pipelines.stats import node_id, report

        report(stats, "add_read", task.uri, n, node_id())


class InputDatasource(Datasource):
    """All the recipe's inputs as one Ray Data source: one read task per file.

    :meth:`scan_metadata` must run before the read when the blocks should carry the inputs'
    metadata columns (the runner does); without it they are READ_SCHEMA only.
    """

    def __init__(self, inputs, stats=None) -> None:
        self.tasks: list[FileTask] = []
        self.specs = list(inputs)
        for i, inp in enumerate(self.specs):
            scheme = inp.path.split("://", 1)[0] if "://" in inp.path else None
            listing = list_input(inp.path, inp.exclude)
            dedupe = inp.keyed and inp.on_duplicate_id == "remove"
            entries = [(p, None) for p in listing.files] + listing.excluded
            fields = FieldMap.of(inp)
            for path, why in sorted(entries):
                uri = f"{scheme}://{path}" if scheme and scheme != "file" else path
                fmt = detect_format(path, inp.format)
                tolerate = inp.on_input_error == "continue"
                self.tasks.append(
                    FileTask(
                        uri,
                        path,
                        inp.domain,
                        fmt,
                        inp.text_field,
                        inp.id_field,
                        dedupe,
                        why,
                        tolerate,
                        fields,
                        i,
                        max_record_bytes=int(inp.max_record_mb * 2**20),
                    )
                )
        self.stats = stats
        self.meta: RunMetadata | None = None

    def scan_metadata(self) -> RunMetadata:
        """Fix the run's metadata columns from every JSONL and Parquet file (:mod:`pipelines.metadata`)
        and the fixed fields of WARC files (:data:`pipelines.warc.WARC_FIELDS`, not scanned).

        Files are scanned as Ray tasks (about four per CPU, each a contiguous run of files, so
        results keep file order) when Ray is running, else in this process. Raises RecipeError
        when a field clashes with a column Sluice writes.
        """
        live = [t for t in self.tasks if t.excluded is None and t.format in ("jsonl", "parquet", "warc")]
        scanned = iter(_scan_all([t for t in live if t.format != "warc"]))
        self.meta = plan_metadata(self.specs, [_warc_fields(t) if t.format == "warc" else next(scanned) for t in live])
        return self.meta

    @property
    def schema(self) -> pa.Schema:
        return self.meta.read_schema if self.meta is not None else READ_SCHEMA

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        stats, meta = self.stats, self.meta
        groups: list[list[FileTask]] = []
        for t in self.tasks:  # small text files are read many to a task
            if (
                groups
                and t.format == "text"
                and groups[-1][0].format == "text"
                and len(groups[-1]) < TEXT_FILES_PER_TASK
            ):
                groups[-1].append(t)
            else:
                groups.append([t])

        def make(group: list[FileTask]):
            return lambda: (block for t in group for block in read_file(t, stats, meta))

        return [
            ReadTask(
                make(g),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=tuple(t.uri for t in g)),
                schema=self.schema,
            )
            for g in groups
        ]


# ---------------------------------------------------------------- the metadata scan
def scan_file(task: FileTask) -> FileFields:
    """The metadata fields of one file: a Parquet footer, or every record of a JSONL file.

    A file that cannot be read (or breaks part-way) contributes what was read; the read records
    the problem (``input_unreadable`` / ``input_truncated``).
    """
    out = FileFields(source=task.uri, input=task.input)
    fs, _ = resolve(task.uri)
    try:
        if task.format == "parquet":
            with fs.open_input_file(task.path) as f:
                schema = pq.read_schema(f)
            if task.text_field in schema.names:  # else the file is input_unreadable
                out.add_schema(schema, task.fields)
        elif task.format == "jsonl":
            _scan_jsonl(task, fs, out)
    except (OSError, ValueError, EOFError) as e:
        logger.debug("%s: metadata scan stopped: %s", task.uri, e)
    return out


def _scan_jsonl(task: FileTask, fs, out: FileFields) -> None:
    chunk: list[tuple[int, dict]] = []
    cache: dict[str, str | None] = {}
    try:
        with fs.open_input_stream(task.path, compression="detect") as f:
            for n, line in enumerate(_lines(f)):
                obj, _ = _decode(line)
                if obj is None:
                    continue
                chunk.append((n, _kept(obj, task.fields, cache, False)))
                if len(chunk) >= SCAN_CHUNK:
                    out.add_records(chunk)
                    chunk = []
    finally:
        out.add_records(chunk)


def _warc_fields(task: FileTask) -> FileFields:
    from pipelines.warc import WARC_FIELDS

    out = FileFields(source=task.uri, input=task.input)
    out.add_schema(WARC_FIELDS, task.fields)
    return out


def _scan_group(tasks: list[FileTask]) -> list[FileFields]:
    return [scan_file(t) for t in tasks]


#: inputs up to this size (all local files) are scanned in this process: Ray tasks cost more than they save
SCAN_IN_PROCESS_BYTES = 32 << 20


def _local_bytes(tasks: list[FileTask]) -> float:
    """Bytes of the tasks' files on local disk; infinite when one is remote (object storage)."""
    total = 0
    for t in tasks:
        fs, path = resolve(t.uri)
        if fs.type_name != "local":
            return float("inf")
        try:
            total += fs.get_file_info(path).size or 0
        except OSError:
            return float("inf")
    return total


def _scan_all(tasks: list[FileTask]) -> list[FileFields]:
    if not tasks:
        return []
    import ray

    if not ray.is_initialized() or _local_bytes(tasks) <= SCAN_IN_PROCESS_BYTES:
        return _scan_group(tasks)
    from pipelines.cluster import cpus

    n = min(len(tasks), 4 * max(1, cpus()))
    groups = [tasks[k * len(tasks) // n : (k + 1) * len(tasks) // n] for k in range(n)]
    remote = ray.remote(num_cpus=1)(_scan_group)
    return [ff for part in ray.get([remote.remote(g) for g in groups]) for ff in part]
