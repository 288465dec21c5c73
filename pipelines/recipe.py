"""Recipe: the YAML that names inputs, stages and output, validated before any work starts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from operators import load_all
from operators.base import REGISTRY, params_model, problems
from storage.fs import list_input
from storage.run import check_name
from storage.schema import is_reserved

#: a recipe is a small file: bound what validation will read and expand (aliases can nest)
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_NODES = 100_000


class RecipeError(ValueError):
    """A recipe problem, with the field path and YAML line where known."""


class InputSpec(BaseModel):
    """One input source.

    Args:
        path: a file, a directory or a glob; local or any pyarrow filesystem URI.
        domain: the domain every document from this input belongs to.
        format: ``jsonl`` (plain, .gz, .zst), ``parquet``, ``text`` (one document per file) or
            ``warc`` (.warc, .warc.gz: HTML responses become documents, see :mod:`pipelines.warc`);
            ``auto`` picks from the file extension.
        text_field: the field holding the document text (jsonl, parquet).
        id_field: the field holding a stable id, by default the record's own ``id``; a record
            without it (and every record when ``id_field: null``) gets a hash of file and row.
            WARC records use their ``WARC-Record-ID`` unless ``id_field: null``.
        exclude: glob patterns (fnmatch; ``*`` also crosses ``/``) of files to leave out, matched
            against the path relative to the input's directory; each excluded file is counted as
            a removed row with reason ``input_excluded``. Version-control folders (``.git``,
            ``.hg``, ``.svn``, ``.bzr``) are always left out and counted the same way (one row per
            folder). Nothing else is skipped: dotfiles and ``_``-files are read like any other.
        on_input_error: ``fail`` (default): a file that cannot be read, or breaks part-way
            (truncated gzip…), is recorded (``input_unreadable`` / ``input_truncated`` with the
            count of records read before the break) and the run exits non-zero after writing
            everything; ``continue``: the same records, and the run succeeds.
        on_duplicate_id: ``error`` (default): two records with the same id fail the run, naming
            both sources; ``remove``: later occurrences (by source path in byte order, then
            position in the file) go to ``removed/`` with reason ``input_duplicate_id``. Applies
            when the input has an ``id_field`` and is not ``format: text``; a duplicate removed only
            if every such input says ``remove``.
        fields: keep only these record fields as metadata columns (default: every field besides
            the text and id fields; see :mod:`pipelines.metadata`).
        drop_fields: leave these record fields out (not with ``fields``).
        rename: ``{field: column}``: store a field under another column name, e.g. one that would
            clash with a column Sluice writes (``source``, ``score`` names…, see
            ``storage.schema.RESERVED_COLUMNS``); a clash left unrenamed is an error.
        max_record_mb: WARC inputs: a response body larger than this (before or after its
            Content-Encoding is undone) is not read into memory; its row is removed as
            ``input_too_large``.
    """

    model_config = ConfigDict(extra="forbid")
    path: str
    domain: str
    format: Literal["auto", "jsonl", "parquet", "text", "warc"] = "auto"
    text_field: str = "text"
    id_field: str | None = "id"
    exclude: list[str] = Field(default_factory=list)
    on_input_error: Literal["fail", "continue"] = "fail"
    on_duplicate_id: Literal["error", "remove"] = "error"
    fields: list[str] | None = None
    drop_fields: list[str] = Field(default_factory=list)
    rename: dict[str, str] = Field(default_factory=dict)
    max_record_mb: float = Field(10, gt=0)

    @field_validator("domain")
    @classmethod
    def _domain_ok(cls, v: str) -> str:
        return check_name("domain", v)

    @property
    def keyed(self) -> bool:
        """Whether records of this input can carry their own id (so repeated ids are possible)."""
        return self.id_field is not None and self.format != "text"

    @model_validator(mode="after")
    def _metadata_ok(self) -> InputSpec:
        """What the metadata options can be checked for without reading data (clashes found in the
        data are reported when the run scans the inputs, pipelines.metadata)."""
        where = f"input {self.path!r} (domain {self.domain!r})"
        named = [*(self.fields or []), *self.drop_fields, *self.rename]
        if self.format == "text" and (self.fields is not None or named):
            raise ValueError(f"{where}: `format: text` inputs have no record fields for fields/drop_fields/rename")
        if self.format == "warc":
            from pipelines.warc import WARC_FIELDS

            unknown = [n for n in named if n not in WARC_FIELDS.names]
            if unknown:
                raise ValueError(
                    f"{where}: `format: warc` inputs have the fields {', '.join(WARC_FIELDS.names)}; "
                    f"not {', '.join(map(repr, unknown))}"
                )
        if self.fields is not None and self.drop_fields:
            raise ValueError(f"{where}: at most one of `fields` and `drop_fields` may be given")
        for name in named:
            if name in (self.text_field, self.id_field):
                role = "text_field" if name == self.text_field else "id_field"
                raise ValueError(f"{where}: {name!r} is the input's {role}, not a metadata field")
        for old, new in self.rename.items():
            if not new.strip():
                raise ValueError(f"{where}: rename {old!r} to an empty name")
            if old in self.drop_fields or (self.fields is not None and old not in self.fields):
                raise ValueError(f"{where}: rename {old!r}: that field is left out (fields/drop_fields)")
        targets = list(self.rename.values())
        if len(set(targets)) != len(targets):
            raise ValueError(f"{where}: rename maps two fields onto one column: {self.rename}")
        for name in self.fields or []:
            col = self.rename.get(name, name)
            if is_reserved(col):
                raise ValueError(
                    f"{where}: field {name!r} clashes with a column Sluice writes; rename it (rename: {{{name}: …}})"
                )
            if name not in self.rename and name in targets:
                raise ValueError(f"{where}: field {name!r} and a renamed field would both become column {name!r}")
        for old, new in self.rename.items():
            if is_reserved(new):
                raise ValueError(f"{where}: rename {old!r} to {new!r} clashes with a column Sluice writes")
        return self


class StageSpec(BaseModel):
    """One stage: ``op`` names a registered operator; other keys are its parameters."""

    model_config = ConfigDict(extra="allow")
    op: str
    name: str | None = None
    on_error: Literal["fail", "quarantine"] = "quarantine"

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_name("stage name", v)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def stage_name(self) -> str:
        return self.name or self.op


class OutputSpec(BaseModel):
    """Where the run writes. ``shard_mb`` is the target size of one shard."""

    model_config = ConfigDict(extra="forbid")
    dir: str = "out/run"
    shard_mb: float = Field(256, gt=0)


class Recipe(BaseModel):
    """A whole recipe: inputs, ordered stages, output."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[InputSpec] = Field(min_length=1)
    stages: list[StageSpec] = Field(default_factory=list)
    output: OutputSpec = Field(default_factory=OutputSpec)
    #: what `sluice calibrate` measured (recorded in the manifest, shown in the report; not run)
    calibration: dict[str, Any] | None = None

    def fingerprint(self, upto: int | None = None) -> str:
        """Hash of the inputs and of the stages up to ``upto`` (exclusive): what a checkpoint depends on."""
        stages = self.stages if upto is None else self.stages[:upto]
        body = {
            "inputs": [i.model_dump() for i in self.inputs],
            "stages": [s.model_dump() for s in stages],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _expanded_size(node: yaml.Node | None) -> int:
    """Values the composed tree expands to, counting every alias use (memoised, so bombs are cheap to measure)."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in memo:
            return memo[id(n)]
        memo[id(n)] = MAX_RECIPE_NODES + 1  # a cycle counts as too big
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        memo[id(n)] = min(total, 10 * MAX_RECIPE_NODES)
        return memo[id(n)]

    return 0 if node is None else size(node)


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path in a composed YAML tree to its 1-based line number."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = (*path, k.value)
            out[key] = k.start_mark.line + 1
            _line_index(v, key, out)
            out[key] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, (*path, i), out)
    return out


def _where(loc: tuple, lines: dict[tuple, int]) -> str:
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"{field or '<recipe>'} (line {lines[loc[:n]]})"
    return field


def _format(err: ValidationError, prefix: tuple, lines: dict[tuple, int]) -> list[str]:
    msgs = []
    for e in problems(err):
        loc = (*prefix, *e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown parameter"
        msgs.append(f"{_where(loc, lines)}: {msg}")
    return msgs


def parse_recipe(text: str, *, source: str = "<recipe>", check_inputs: bool = True) -> Recipe:
    """Parse and validate recipe YAML; raise RecipeError listing every problem found."""
    load_all()
    if len(text.encode("utf-8", "replace")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source}: a recipe may be at most {MAX_RECIPE_BYTES:,} bytes")
    try:
        node = yaml.compose(text)
        n = _expanded_size(node)
        if n > MAX_RECIPE_NODES:
            raise RecipeError(
                f"{source}: the YAML expands to {n:,} values (aliases included); at most {MAX_RECIPE_NODES:,}"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise RecipeError(f"{source}: the YAML nests too deeply") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with inputs, stages and output")
    lines = _line_index(node) if node is not None else {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{source}:\n  " + "\n  ".join(_format(e, (), lines))) from None

    recipe, origin = _expand(recipe)
    if (with_ids := _with_id_stage(recipe)) is not recipe:
        recipe, origin = with_ids, [0, *origin]
    problems: list[str] = []
    names: set[str] = set()
    for i, st in enumerate(recipe.stages):
        at = ("stages", origin[i])  # errors point at the stage as written in the YAML
        try:
            check_name("stage name", st.stage_name)
        except ValueError as e:
            problems.append(f"{_where((*at, 'op'), lines)}: {e}")
            continue
        if st.stage_name in names:
            problems.append(f"{_where((*at, 'op'), lines)}: stage name {st.stage_name!r} used twice; set `name:`")
        names.add(st.stage_name)
        cls = REGISTRY.get(st.op)
        if cls is None:
            known = ", ".join(sorted(REGISTRY))
            problems.append(f"{_where((*at, 'op'), lines)}: unknown op {st.op!r}; known ops: {known}")
            continue
        try:
            validated = params_model(cls).model_validate(st.params)
            cls.validate_params(stage=st.stage_name, **validated.model_dump())
        except ValidationError as e:
            problems.extend(_format(e, at, lines))
        except (ValueError, TypeError) as e:
            problems.append(f"{_where((*at, 'op'), lines)}: {e}")
    if check_inputs:
        for i, inp in enumerate(recipe.inputs):
            try:
                if not list_input(inp.path, inp.exclude).files:
                    problems.append(f"{_where(('inputs', i, 'path'), lines)}: no files match {inp.path!r}")
            except (OSError, ValueError) as e:
                problems.append(f"{_where(('inputs', i, 'path'), lines)}: cannot list {inp.path!r}: {e}")
    if problems:
        raise RecipeError(f"{source}:\n  " + "\n  ".join(problems))
    return recipe


def _with_id_stage(recipe: Recipe) -> Recipe:
    """Prepend the ``input_ids`` stage when every keyed input (``InputSpec.keyed``) asks to remove duplicate ids."""
    keyed = [i for i in recipe.inputs if i.keyed]
    if not keyed or any(i.on_duplicate_id != "remove" for i in keyed):
        return recipe
    if recipe.stages and recipe.stages[0].op == "input_ids":
        return recipe
    first = StageSpec(op="input_ids", name="input_ids", on_error="fail")
    return recipe.model_copy(update={"stages": [first, *recipe.stages]})


def duplicate_ids_fail(recipe: Recipe) -> bool:
    """Whether a repeated id fails the run (the default), rather than being removed by ``input_ids``."""
    keyed = [i for i in recipe.inputs if i.keyed]
    return bool(keyed) and any(i.on_duplicate_id != "remove" for i in keyed)


def _expand(recipe: Recipe) -> tuple[Recipe, list[int]]:
    """Let operators expand into several stages (Operator.expand); return the recipe and,
    for every resulting stage, the index of the stage it came from."""
    stages: list[StageSpec] = []
    origin: list[int] = []
    for i, st in enumerate(recipe.stages):
        cls = REGISTRY.get(st.op)
        parts = None
        if cls is not None:
            try:
                parts = cls.expand(st.stage_name, params_model(cls).model_validate(st.params).model_dump())
            except ValidationError:
                parts = None  # reported with the stage's line by the caller
        for part in parts if parts is not None else [st]:
            stages.append(
                part if isinstance(part, StageSpec) else StageSpec.model_validate({"on_error": st.on_error, **part})
            )
            origin.append(i)
    return recipe.model_copy(update={"stages": stages}), origin


def load_recipe(path: str | Path, *, check_inputs: bool = True) -> Recipe:
    """Read and validate a recipe file; relative input paths resolve against the working directory."""
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    return parse_recipe(p.read_text(), source=str(path), check_inputs=check_inputs)


def stage_params(stage: StageSpec) -> dict[str, Any]:
    """The validated, defaulted parameters of ``stage`` as constructor kwargs."""
    return params_model(REGISTRY[stage.op]).model_validate(stage.params).model_dump()
