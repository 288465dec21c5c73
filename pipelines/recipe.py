"""Recipe: the YAML that names inputs, stages and output, validated before any work starts."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators import load_all
from operators.base import REGISTRY, params_model
from storage.fs import expand_input

DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RecipeError(ValueError):
    """A recipe problem, with the field path and YAML line where known."""


class InputSpec(BaseModel):
    """One input source.

    Args:
        path: a file, a directory or a glob; local or any pyarrow filesystem URI.
        domain: the domain every document from this input belongs to.
        format: ``jsonl`` (plain, .gz, .zst), ``parquet`` or ``text`` (one document per
            file); ``auto`` picks from the file extension.
        text_field: the field holding the document text (jsonl, parquet).
        id_field: the field holding a stable id; without it ids are hashed from file and row.
    """

    model_config = ConfigDict(extra="forbid")
    path: str
    domain: str
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    text_field: str = "text"
    id_field: str | None = None

    @field_validator("domain")
    @classmethod
    def _domain_ok(cls, v: str) -> str:
        if not DOMAIN_RE.match(v):
            raise ValueError(f"domain {v!r} must match {DOMAIN_RE.pattern} (it names a directory)")
        return v


class StageSpec(BaseModel):
    """One stage: ``op`` names a registered operator; other keys are its parameters."""

    model_config = ConfigDict(extra="allow")
    op: str
    name: str | None = None
    on_error: Literal["fail", "quarantine"] = "quarantine"

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

    def fingerprint(self, upto: int | None = None) -> str:
        """Hash of the inputs and of the stages up to ``upto`` (exclusive): what a checkpoint depends on."""
        stages = self.stages if upto is None else self.stages[:upto]
        body = {
            "inputs": [i.model_dump() for i in self.inputs],
            "stages": [s.model_dump() for s in stages],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


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
    for e in err.errors():
        loc = (*prefix, *e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown parameter"
        msgs.append(f"{_where(loc, lines)}: {msg}")
    return msgs


def parse_recipe(text: str, *, source: str = "<recipe>", check_inputs: bool = True) -> Recipe:
    """Parse and validate recipe YAML; raise RecipeError listing every problem found."""
    load_all()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with inputs, stages and output")
    lines = _line_index(node) if node is not None else {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{source}:\n  " + "\n  ".join(_format(e, (), lines))) from None

    recipe, origin = _expand(recipe)
    problems: list[str] = []
    names: set[str] = set()
    for i, st in enumerate(recipe.stages):
        at = ("stages", origin[i])  # errors point at the stage as written in the YAML
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
                if not expand_input(inp.path):
                    problems.append(f"{_where(('inputs', i, 'path'), lines)}: no files match {inp.path!r}")
            except (OSError, ValueError) as e:
                problems.append(f"{_where(('inputs', i, 'path'), lines)}: cannot list {inp.path!r}: {e}")
    if problems:
        raise RecipeError(f"{source}:\n  " + "\n  ".join(problems))
    return recipe


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
