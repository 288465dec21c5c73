"""Input readers: JSONL (plain/.gz/.zst), Parquet and text directories as one Ray Data source.

Every record becomes a row of ``storage.schema.READ_SCHEMA``. Malformed records are not
dropped: they become rows with ``stage="input"``, a ``reason`` (``input_bad_json``,
``input_bad_utf8``, ``input_not_object``, ``input_missing_text``, ``input_text_not_string``,
``input_empty_text``, ``input_unreadable``) and the raw bytes in ``raw``. A file that breaks
part-way (a truncated gzip) keeps the records read before the break and adds one
``input_truncated`` row saying how many were read and that the rest of the file is lost.
Files left out by an input's ``exclude`` patterns, and version-control folders, become one
``input_excluded`` row each. With ``on_duplicate_id: remove``, a later record of a file
repeating an id seen earlier in the same file becomes ``input_duplicate_id`` (ids repeated
across files are resolved by the ``input_ids`` stage).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

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


class _Rows:
    """Accumulates rows and emits READ_SCHEMA tables of ROWS_PER_BLOCK rows."""

    def __init__(self, task: FileTask, source: str) -> None:
        self.task, self.source = task, source
        self.cols: dict[str, list] = {f.name: [] for f in READ_SCHEMA}
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
        self.count += 1

    def full(self) -> bool:
        return len(self.cols["id"]) >= ROWS_PER_BLOCK

    def flush(self) -> pa.Table:
        table = pa.table(self.cols, schema=READ_SCHEMA)
        self.cols = {f.name: [] for f in READ_SCHEMA}
        return table


def _text_reason(value: object) -> str | None:
    if value is None:
        return "input_missing_text"
    if not isinstance(value, str):
        return "input_text_not_string"
    if not value.strip():
        return "input_empty_text"
    return None


def _read_jsonl(task: FileTask, fs) -> Iterator[pa.Table]:
    rows = _Rows(task, task.uri)
    try:
        with fs.open_input_stream(task.path, compression="detect") as f:
            for n, line in enumerate(_lines(f)):
                if line.strip():
                    _parse_line(rows, task, n, line)
                if rows.full():
                    yield rows.flush()
    except (OSError, ValueError, EOFError):
        yield rows.flush()  # keep what was read before the stream broke
        raise
    yield rows.flush()


def _parse_line(rows: _Rows, task: FileTask, n: int, line: bytes) -> None:
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        rows.add(n, None, None, "input_bad_utf8", line)
        return
    try:
        obj = json.loads(s)
    except ValueError:
        rows.add(n, None, None, "input_bad_json", line)
        return
    if not isinstance(obj, dict):
        rows.add(n, None, None, "input_not_object", line)
        return
    rid = obj.get(task.id_field) if task.id_field else None
    text = obj.get(task.text_field)
    reason = _text_reason(text)
    rows.add(n, None if rid is None else str(rid), text if reason is None else None, reason, line if reason else None)


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


def _read_text(task: FileTask, fs) -> Iterator[pa.Table]:
    rows = _Rows(task, task.uri)
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


def _read_parquet(task: FileTask, fs) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(fs.open_input_file(task.path))
    names = pf.schema_arrow.names
    if task.text_field not in names:
        raise ValueError(f"{task.uri}: no column {task.text_field!r} (columns: {', '.join(names)})")
    cols = [task.text_field] + ([task.id_field] if task.id_field and task.id_field in names else [])
    row = 0
    rows = _Rows(task, task.uri)
    for rg in range(pf.num_row_groups):
        t = pf.read_row_group(rg, columns=cols)
        texts = t.column(task.text_field).to_pylist()
        ids = t.column(task.id_field).to_pylist() if len(cols) > 1 else [None] * len(texts)
        for text, rid in zip(texts, ids):
            reason = _text_reason(text)
            raw = None if reason is None or text is None else repr(text).encode()
            rows.add(row, None if rid is None else str(rid), text if reason is None else None, reason, raw)
            row += 1
            if rows.full():
                yield rows.flush()
        yield rows.flush()


READERS = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet}


INPUT_ERRORS = ("input_unreadable", "input_truncated")


def read_file(task: FileTask, stats=None) -> Iterator[pa.Table]:
    """Read one file into READ_SCHEMA blocks; a file that cannot be opened becomes one removed row,
    one that breaks part-way keeps what was read plus one ``input_truncated`` row."""
    fs, _ = resolve(task.uri)
    n = 0
    try:
        if task.excluded is not None:
            rows = _Rows(task, task.uri)
            rows.add(0, None, None, "input_excluded", error=task.excluded)
            n = 1
            yield rows.flush()
        else:
            for block in READERS[task.format](task, fs):
                n += block.num_rows
                if block.num_rows:
                    yield block
    except (OSError, ValueError, EOFError) as e:
        rows = _Rows(task, task.uri)
        if n:  # a stream that broke mid-way (truncated gzip…): record it, keep what was read
            logger.warning("%s: read stopped after %d records: %s", task.uri, n, e)
            msg = f"read stopped after {n} records; the rest of the file is lost: {type(e).__name__}: {e}"
            rows.add(n, None, None, "input_truncated", error=msg)
        else:
            rows.add(n, None, None, "input_unreadable", error=f"{type(e).__name__}: {e}")
        n += 1
        yield rows.flush()
    if stats is not None:
        import ray

        from pipelines.stats import node_id

        ray.get(stats.add_read.remote(task.uri, n, node_id()))


class InputDatasource(Datasource):
    """All the recipe's inputs as one Ray Data source: one read task per file."""

    def __init__(self, inputs, stats=None) -> None:
        self.tasks: list[FileTask] = []
        for inp in inputs:
            scheme = inp.path.split("://", 1)[0] if "://" in inp.path else None
            listing = list_input(inp.path, inp.exclude)
            dedupe = bool(inp.id_field) and inp.on_duplicate_id == "remove"
            entries = [(p, None) for p in listing.files] + listing.excluded
            for path, why in sorted(entries):
                uri = f"{scheme}://{path}" if scheme and scheme != "file" else path
                fmt = detect_format(path, inp.format)
                tolerate = inp.on_input_error == "continue"
                self.tasks.append(
                    FileTask(uri, path, inp.domain, fmt, inp.text_field, inp.id_field, dedupe, why, tolerate)
                )
        self.stats = stats

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        stats = self.stats
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
            return lambda: (block for t in group for block in read_file(t, stats))

        return [
            ReadTask(
                make(g),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=tuple(t.uri for t in g)),
                schema=READ_SCHEMA,
            )
            for g in groups
        ]
