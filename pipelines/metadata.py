"""Input metadata: every field of an input record besides its text and id, kept as a typed column.

One metadata schema holds for the whole run. It is fixed before the first row is read, so every
block the reader emits has the same columns (``READ_SCHEMA`` + the metadata columns, null where a
record lacks a field) and Ray Data, the checkpoints and the shards all share one schema:

- Parquet inputs: the fields of each file's footer schema (dictionary columns as their values).
- JSONL inputs: every record of every file, scanned before the read (Ray tasks, see
  :meth:`pipelines.readers.InputDatasource.scan_metadata`). A sample would miss a field first
  seen in record 1,000,000, so nothing short of a full scan is correct; it costs one more JSON
  parse per record and runs only when the first segment runs (a resume that reuses its
  checkpoint does not scan). Types are inferred by pyarrow per chunk of ``SCAN_CHUNK`` records
  and merged with pyarrow's permissive promotion: null fits anything, int64 and float64 make
  float64, objects become structs with the union of their keys (nested objects nest), lists
  take the merge of their items.
- A field whose values cannot share one Arrow type anywhere in the run (an int in one file and a
  string in another, an object and a string, a list mixing types, an integer beyond int64,
  objects with more than ``MAX_STRUCT_FIELDS`` keys, or only empty objects, which Parquet cannot
  store) becomes a JSON text column: each value is stored as its JSON text (``5``, ``"5"``,
  ``{"a": 1}``), JSON null as SQL NULL; DuckDB's ``json_extract`` reads it. The run logs a
  warning and the manifest names the field and why (``metadata.json_fallbacks``).
- A field that is null in every record becomes a string column.

Per input, ``fields`` keeps only the listed fields, ``drop_fields`` leaves the listed ones out and
``rename`` maps a field to another column; the text and id fields are never metadata. A column
that clashes with one Sluice writes (``storage.schema.RESERVED_COLUMNS``, case-insensitively),
two fields of one input renamed onto one column, or two columns that differ only in case is a
:class:`~pipelines.recipe.RecipeError` naming the field and the input, raised before any work.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa

from storage.schema import READ_SCHEMA, RESERVED_COLUMNS, is_reserved

logger = logging.getLogger(__name__)

#: records per pyarrow type inference in the scan
SCAN_CHUNK = 1024
#: an object with more distinct keys than this (at any depth) is a map, not a record: stored as JSON
MAX_STRUCT_FIELDS = 512

#: the index columns pandas writes into Parquet files
PANDAS_INDEX = re.compile(r"__index_level_\d+__")

_CONVERT_ERRORS = (pa.ArrowException, OverflowError, ValueError, TypeError)


@dataclass(frozen=True)
class FieldMap:
    """Which fields of an input's records are metadata, and under which column names.

    Args:
        keep: only these fields (the input's ``fields:``); None keeps every field.
        drop: fields left out (``drop_fields:``).
        rename: (field, column) pairs (``rename:``).
        exclude: the input's text and id fields, stored as ``text`` and ``id`` instead.
    """

    keep: tuple[str, ...] | None = None
    drop: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: Any) -> FieldMap:
        """The map of a recipe input (:class:`pipelines.recipe.InputSpec`)."""
        return cls(
            None if spec.fields is None else tuple(spec.fields),
            tuple(spec.drop_fields),
            tuple(spec.rename.items()),
            tuple(x for x in (spec.text_field, spec.id_field) if x),
        )

    def column(self, name: str) -> str | None:
        """The metadata column of record field ``name``, or None when the field is not kept."""
        if name in self.exclude or name in self.drop or (self.keep is not None and name not in self.keep):
            return None
        return next((new for old, new in self.rename if old == name), name)


def unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The type that holds values of both ``a`` and ``b`` (pyarrow's permissive promotion); raises if none."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    both = [pa.schema([pa.field("f", a)]), pa.schema([pa.field("f", b)])]
    return pa.unify_schemas(both, promote_options="permissive").field("f").type


@dataclass
class TypeTable:
    """Names in order of first appearance, each with one Arrow type (and where it was seen) or a conflict."""

    types: dict[str, tuple[pa.DataType, str]] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    names: dict[str, None] = field(default_factory=dict)

    def merge(self, name: str, typ: pa.DataType, where: str | Callable[[], str]) -> None:
        """Widen ``name``'s type by ``typ`` (first seen at ``where``); record a conflict when no type holds both."""
        if name in self.conflicts:
            return
        self.names.setdefault(name)
        old = self.types.get(name)
        if old is None or (pa.types.is_null(old[0]) and not pa.types.is_null(typ)):
            self.types[name] = (typ, where() if callable(where) else where)
            return
        try:
            merged = unify(old[0], typ)
        except _CONVERT_ERRORS:
            self.conflict(name, f"{old[0]} at {old[1]} vs {typ} at {where() if callable(where) else where}")
            return
        if merged != old[0]:
            self.types[name] = (merged, old[1])

    def conflict(self, name: str, reason: str) -> None:
        """Mark ``name`` as holding values of no one type (the first reason stays)."""
        self.names.setdefault(name)
        self.types.pop(name, None)
        self.conflicts.setdefault(name, reason)


@dataclass
class FileFields(TypeTable):
    """What the records of one file hold, by record field name (before ``rename``).

    Args:
        source: the file.
        input: index of the recipe input it belongs to.
    """

    source: str = ""
    input: int = 0

    def add_schema(self, schema: pa.Schema, fields: FieldMap) -> None:
        """A Parquet file's fields (dictionary-encoded columns count as their value type; the index
        columns pandas writes, ``__index_level_N__``, are not record fields and are left out)."""
        for f in schema:
            if fields.column(f.name) is not None and not PANDAS_INDEX.fullmatch(f.name):
                typ = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
                self.merge(f.name, typ, self.source)

    def add_records(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        """Merge the types of a chunk of JSONL records, given as (line index, kept fields)."""
        if self.conflicts:  # a field that already conflicts is JSON text whatever else it holds
            rows = [(n, {k: v for k, v in d.items() if k not in self.conflicts}) for n, d in rows]
        dicts = [d for _, d in rows]
        if not any(dicts):
            return
        try:
            types = {f.name: f.type for f in pa.array(dicts).type}
        except _CONVERT_ERRORS:
            types = {}
            for key in dict.fromkeys(k for d in dicts for k in d):
                try:
                    types[key] = pa.array([d.get(key) for d in dicts]).type
                except _CONVERT_ERRORS as e:
                    self.conflict(key, self._locate(key, rows, e))
        for key, typ in types.items():
            self.merge(key, typ, lambda key=key: self._where(key, rows))

    def _where(self, key: str, rows: list[tuple[int, dict]]) -> str:
        """The first line of ``rows`` where ``key`` has a value (else where it is null)."""
        hit = next((n for n, d in rows if d.get(key) is not None), None)
        if hit is None:
            hit = next(n for n, d in rows if key in d)
        return f"{self.source} line {hit + 1}"

    def _locate(self, key: str, rows: list[tuple[int, dict]], err: Exception) -> str:
        """Why ``key``'s values in ``rows`` share no type, naming the two lines that disagree."""
        typ, at = None, 0
        for n, d in rows:
            v = d.get(key)
            if v is None:
                continue
            try:
                vt = pa.array([v]).type
            except _CONVERT_ERRORS as e:
                return f"the value at {self.source} line {n + 1} fits no Arrow type ({e})"
            try:
                typ, at = (vt, n) if typ is None else (unify(typ, vt), at)
            except _CONVERT_ERRORS:
                return f"{typ} at {self.source} line {at + 1} vs {vt} at {self.source} line {n + 1}"
        return f"values in {self.source} share no Arrow type ({err})"


def settle(typ: pa.DataType) -> tuple[pa.DataType | None, str | None]:
    """The type a column is stored with (null becomes string), or (None, why) when only JSON text holds it."""
    if pa.types.is_null(typ):
        return pa.string(), None
    if pa.types.is_struct(typ):
        if typ.num_fields == 0:
            return None, "it holds only empty objects ({}), which Parquet cannot store as a struct"
        if typ.num_fields > MAX_STRUCT_FIELDS:
            return None, f"its objects have {typ.num_fields} distinct keys (more than {MAX_STRUCT_FIELDS}: a map)"
        fields = []
        for f in typ:
            sub, why = settle(f.type)
            if sub is None:
                return None, f"in {f.name!r}, {why}"
            fields.append(f.with_type(sub))
        return pa.struct(fields), None
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        sub, why = settle(typ.value_type)
        if sub is None:
            return None, f"in its list items, {why}"
        item = typ.value_field.with_type(sub)
        if pa.types.is_large_list(typ):
            return pa.large_list(item), None
        return pa.list_(item, typ.list_size if pa.types.is_fixed_size_list(typ) else -1), None
    return typ, None


@dataclass(frozen=True)
class RunMetadata:
    """The run's metadata columns, fixed before reading.

    Args:
        schema: the metadata columns in order, with their stored types (JSON text columns: string).
        json: column -> why it is stored as JSON text.
        columns: per recipe input, ``{record field: column}`` of the fields its files hold.
        not_found: per recipe input, fields named in its ``fields:`` or ``rename:`` that no record holds.
    """

    schema: pa.Schema = field(default_factory=lambda: pa.schema([]))
    json: dict[str, str] = field(default_factory=dict)
    columns: list[dict[str, str]] = field(default_factory=list)
    not_found: list[list[str]] = field(default_factory=list)

    @cached_property
    def read_schema(self) -> pa.Schema:
        """What the reader emits: READ_SCHEMA, then the metadata columns."""
        return pa.schema([*READ_SCHEMA, *self.schema])

    def report(self) -> dict[str, Any]:
        """The manifest's ``metadata`` section: columns (type, the inputs and fields they come from),
        JSON-text fallbacks with their reasons, and ``fields:`` / ``rename:`` entries no record held."""
        cols = []
        for f in self.schema:
            origin = [{"input": i, "field": k} for i, m in enumerate(self.columns) for k, c in m.items() if c == f.name]
            cols.append({"name": f.name, "type": str(f.type), "json": f.name in self.json, "from": origin})
        missing = {str(i): names for i, names in enumerate(self.not_found) if names}
        return {"columns": cols, "json_fallbacks": dict(self.json), "not_found": missing}


def plan_metadata(specs: Sequence[Any], scans: Iterable[FileFields]) -> RunMetadata:
    """Merge the per-file scans of the recipe inputs ``specs`` into the run's metadata columns.

    Raises RecipeError naming every clash (a reserved name, two fields of one input onto one
    column, two columns that differ only in case).
    """
    from pipelines.recipe import RecipeError

    maps = [FieldMap.of(s) for s in specs]
    labels = [f"inputs[{i}] (path {s.path!r}, domain {s.domain!r})" for i, s in enumerate(specs)]
    table = TypeTable()
    columns: list[dict[str, str]] = [{} for _ in specs]
    problems: dict[str, None] = {}
    for ff in scans:
        i = ff.input
        for name in ff.names:
            col = maps[i].column(name)
            if col is None:
                continue
            twin = next((k for k, c in columns[i].items() if c == col and k != name), None)
            if twin is not None:
                problems.setdefault(f"{labels[i]}: fields {twin!r} and {name!r} both become column {col!r}; rename one")
            columns[i][name] = col
            if name in ff.conflicts:
                table.conflict(col, ff.conflicts[name])
            else:
                table.merge(col, *ff.types[name])
    by_lower: dict[str, list[str]] = {}
    for col in table.names:
        by_lower.setdefault(col.lower(), []).append(col)
        if is_reserved(col):
            ours = next(r for r in sorted(RESERVED_COLUMNS) if r.lower() == col.lower())
            for i, m in enumerate(columns):
                for name in (k for k, c in m.items() if c == col):
                    problems.setdefault(
                        f"{labels[i]}: field {name!r} clashes with the column {ours!r} that Sluice writes; "
                        f"rename it (rename: {{{name}: <new name>}}) or leave it out (drop_fields: [{name}])"
                    )
    for same in by_lower.values():
        if len(same) > 1:
            problems.setdefault(
                f"metadata columns {', '.join(map(repr, same))} differ only in case (SQL would not tell them "
                "apart); rename all but one"
            )
    if problems:
        raise RecipeError("input metadata fields:\n  " + "\n  ".join(problems))

    fields, as_json = [], {}
    for col in table.names:
        why = table.conflicts.get(col)
        typ = None
        if why is None:
            typ, why = settle(table.types[col][0])
        if typ is None:
            as_json[col] = why
            logger.warning("metadata field %r is stored as JSON text: %s", col, why)
        fields.append(pa.field(col, typ or pa.string()))
    not_found = []
    for i, s in enumerate(specs):
        gone = [f for f in dict.fromkeys([*(s.fields or []), *s.rename]) if f not in columns[i]]
        if gone:
            logger.warning("%s: no record holds the field(s) %s named in fields/rename", labels[i], ", ".join(gone))
        not_found.append(gone)
    return RunMetadata(pa.schema(fields), as_json, columns, not_found)


# ---------------------------------------------------------------- conforming what the reader read
def record_arrays(records: Sequence[dict[str, Any] | None], meta: RunMetadata) -> list[pa.Array]:
    """The metadata columns of JSONL records (each ``{column: value}``, None for a record without any)."""
    out = []
    for f in meta.schema:
        values = [None if r is None else r.get(f.name) for r in records]
        if f.name in meta.json:
            out.append(pa.array([None if v is None else _dumps(v) for v in values], pa.string()))
            continue
        try:
            out.append(pa.array(values, f.type))
        except _CONVERT_ERRORS as e:
            raise ValueError(
                f"metadata field {f.name!r}: a value does not fit {f.type}, the type the metadata scan found "
                f"({type(e).__name__}: {e}); did the file change during the run?"
            ) from None
    return out


def table_arrays(table: pa.Table, fields: FieldMap, meta: RunMetadata) -> list[pa.Array]:
    """The metadata columns of a Parquet slice (its columns named as in the file), cast to the run's types."""
    by_col = {}
    for name in table.column_names:
        if (col := fields.column(name)) is not None:
            by_col[col] = table.column(name).combine_chunks()
    out = []
    for f in meta.schema:
        arr = by_col.get(f.name)
        if arr is None:
            out.append(pa.nulls(table.num_rows, f.type))
            continue
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if f.name in meta.json:
            out.append(pa.array([None if v is None else _dumps(v) for v in arr.to_pylist()], pa.string()))
        elif arr.type == f.type:
            out.append(arr)
        else:
            out.append(_cast(arr, f))
    return out


def _cast(arr: pa.Array, f: pa.Field) -> pa.Array:
    try:
        return arr.cast(f.type)
    except _CONVERT_ERRORS:
        try:  # casts Arrow lacks (some nested ones) go through Python values
            return pa.array(arr.to_pylist(), f.type)
        except _CONVERT_ERRORS as e:
            raise ValueError(f"metadata field {f.name!r}: cannot convert {arr.type} to {f.type}: {e}") from None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    """JSON for the Python values Parquet columns hold: dates as ISO 8601, bytes as base64, the rest as text."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return str(value)
