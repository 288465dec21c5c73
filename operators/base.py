"""Operator base classes: row-wise transforms over pyarrow batches that never drop a row."""

from __future__ import annotations

import functools
import inspect
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from storage.schema import DUP_OF, REASON, STAGE, score_field, with_column


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


#: constraints operators write on their constructor parameters (checked by pydantic, see params_model)
NOT_BOOL = BeforeValidator(_not_bool)
AtLeastOne = Annotated[int, NOT_BOOL, Field(ge=1)]
NonNegativeInt = Annotated[int, NOT_BOOL, Field(ge=0)]
NonNegative = Annotated[float, NOT_BOOL, Field(ge=0)]
Positive = Annotated[float, NOT_BOOL, Field(gt=0)]
Share = Annotated[float, NOT_BOOL, Field(gt=0, le=1)]  # (0, 1]
Probability = Annotated[float, NOT_BOOL, Field(ge=0, le=1)]  # [0, 1]


def _existing_file(path: str) -> str:
    if not Path(path).expanduser().is_file():
        raise ValueError(f"file {path!r} does not exist")
    return path


#: a parameter naming a local file that must exist when the recipe is validated
ExistingFile = Annotated[str, AfterValidator(_existing_file)]

#: op name (as written in recipes) -> operator class
REGISTRY: dict[str, type[Operator]] = {}


class DataMismatch(ValueError):
    """The data does not fit the stage as configured (a column it needs is missing or of another type).

    Not a per-batch failure: quarantining the rows would remove every document for a configuration
    mistake, so the run stops whatever the stage's ``on_error`` says, with this message."""


def register(name: str):
    """Class decorator: make an operator available to recipes as ``op: name``."""

    def deco(cls: type[Operator]) -> type[Operator]:
        if name in REGISTRY:
            raise ValueError(f"operator {name!r} registered twice")
        cls.op_name = name
        REGISTRY[name] = cls
        return cls

    return deco


class Operator(ABC):
    """A row-wise stage, applied with ``map_batches(..., batch_format="pyarrow")``.

    Contract: ``__call__`` returns the batch with the same rows in the same order. Rows
    already removed (``reason`` not null) and rows outside ``domains`` pass through
    untouched. A filter removes a row by setting ``reason`` (a stable snake_case code)
    and ``stage``; it never drops it. Score columns named in ``adds`` are always present
    in the output (null where a row was not scored) so every batch has one schema. An
    operator with ``adds_rows`` (rephrase) may append new rows after the batch's rows; the
    runner counts them as synthetic rows for the conservation check.

    Args:
        stage: the stage name recorded on removed rows (the op name, or the recipe's ``name``).
        domains: apply only to rows of these domains; ``None`` applies to all.
    """

    op_name: ClassVar[str] = ""
    #: score columns this operator adds (declared in storage.schema.SCORE_FIELDS)
    adds: ClassVar[tuple[str, ...]] = ()
    #: True for model operators that want an accelerator when one exists
    uses_accelerator: ClassVar[bool] = False
    #: True for operators that append new rows (e.g. synthetic documents) after the batch's rows
    adds_rows: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every operator's constructor checks its parameters against :func:`params_model` first,
        so constraints written on the annotations hold for recipes and Python callers alike."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_checks_params", False):
            return

        @functools.wraps(init)
        def checked(self: Operator, *args: Any, **kw: Any) -> None:
            if _init_owner(type(self)) is cls:  # the most-derived constructor checks, once
                check_params(type(self), kw)
            init(self, *args, **kw)

        checked._checks_params = True  # type: ignore[attr-defined]
        cls.__init__ = checked  # type: ignore[method-assign]

    def __init__(self, *, stage: str, domains: list[str] | None = None) -> None:
        self.stage = stage
        self.domains = None if domains is None else list(domains)

    def active(self, batch: pa.Table) -> np.ndarray:
        """Boolean mask of rows this operator works on: live and in ``domains``."""
        return active_rows(batch, self.domains)

    def __call__(self, batch: pa.Table) -> pa.Table:
        active = self.active(batch)
        out = self.apply(batch, active) if active.any() else batch
        for name in self.adds:
            if name not in out.column_names:
                field = score_field(name)
                out = out.append_column(field, pa.nulls(out.num_rows, field.type))
        if out.num_rows != batch.num_rows and not self._appended(batch, out):
            raise RuntimeError(
                f"stage {self.stage!r} returned {out.num_rows} rows for {batch.num_rows}: "
                "operators must mark rows, never drop them"
            )
        return out

    def _appended(self, batch: pa.Table, out: pa.Table) -> bool:
        """An ``adds_rows`` operator may return the batch's rows, in order, followed by new rows."""
        n = batch.num_rows
        return self.adds_rows and out.num_rows > n and out.column("id").slice(0, n).equals(batch.column("id"))

    @classmethod
    def wants_accelerator(cls, params: dict[str, Any]) -> bool:
        """Whether this stage, with these parameters, should get a GPU when the cluster has one."""
        return cls.uses_accelerator

    def drain_metrics(self) -> dict:
        """Counters since the last call for the manifest's stage report (the runner sums them); none by default."""
        return {}

    #: the key of the stage report under which the summed counters are recorded
    metrics_key: ClassVar[str] = "generation"

    @classmethod
    def finish_metrics(cls, metrics: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """The summed counters as the manifest records them (e.g. counts derived from them); as they are by default."""
        return metrics

    @abstractmethod
    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        """Process the rows where ``active`` is true; return all rows."""

    @classmethod
    def expand(cls, name: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Optionally replace this stage by several, e.g. a scoring stage plus a whole-dataset
        selection stage. Return a list of ``{"op": ..., "name": ..., **params}`` dicts (each is
        validated like a recipe stage), or None to keep the stage as written."""
        return None

    @classmethod
    def default_files(cls) -> dict[str, str]:
        """Files the operator reads when the recipe leaves their parameter unset and the default is not a plain
        value of the constructor (e.g. a model found inside an installed package): ``{param: path}``, so a
        changed default file re-runs the stage on resume."""
        return {}

    @classmethod
    def validate_params(cls, **params: Any) -> None:
        """Raise ValueError for bad parameters before any work starts.

        The default builds the operator, so ``__init__`` checks run at recipe validation.
        Operators that load models in ``__init__`` override this with cheap checks.
        """
        cls(**params)


def active_rows(batch: pa.Table, domains: list[str] | tuple[str, ...] | None) -> np.ndarray:
    """Boolean mask of the rows a stage works on: live (no ``reason``) and, with ``domains``, in one of them."""
    mask = pc.is_null(batch.column(REASON))
    if domains is not None:
        mask = pc.and_(mask, pc.is_in(batch.column("domain"), pa.array(list(domains), pa.string())))
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


class Filter(Operator):
    """A per-document filter: ``check(text)`` returns a reason code to remove, or ``None``."""

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        idx = np.flatnonzero(active)
        texts = batch.column("text").take(pa.array(idx)).to_pylist()
        reasons = [self.check(t) for t in texts]
        hit = [i for i, r in zip(idx, reasons) if r is not None]
        if not hit:
            return batch
        return mark_removed(batch, np.asarray(hit), [r for r in reasons if r is not None], self.stage)

    @abstractmethod
    def check(self, text: str) -> str | None:
        """Return a reason code if ``text`` should be removed, else ``None``."""


def mark_removed(
    batch: pa.Table,
    rows: np.ndarray,
    reasons: list[str],
    stage: str,
    dup_of: list[str] | None = None,
) -> pa.Table:
    """Set ``reason``/``stage`` (and ``dup_of``) on ``rows`` of ``batch``."""
    reason = batch.column(REASON).to_pylist()
    stages = batch.column(STAGE).to_pylist()
    dups = batch.column(DUP_OF).to_pylist()
    for k, i in enumerate(rows.tolist()):
        reason[i] = reasons[k]
        stages[i] = stage
        if dup_of is not None:
            dups[i] = dup_of[k]
    batch = with_column(batch, REASON, pa.array(reason, pa.string()))
    batch = with_column(batch, STAGE, pa.array(stages, pa.string()))
    return with_column(batch, DUP_OF, pa.array(dups, pa.string()))


@dataclass(frozen=True)
class StageContext:
    """Where a whole-dataset step runs, as the runner tells it (so operators never reach up into the runner).

    Args:
        num_partitions: partitions for the step's shuffles and aggregations.
        gpus: GPUs in the Ray cluster; 0 runs models on CPU.
        tmp_dir: a directory for spills, or None for the system's temporary directory.
        rows: live rows the step reads, when the runner knows them (a small input is grouped in the driver).
    """

    num_partitions: int = 2
    gpus: int = 0
    tmp_dir: str | None = None
    rows: int | None = None


def in_process(ds: Any) -> bool:
    """Whether ``ds`` is an in-process dataset (:class:`pipelines.local.LocalDataset`), not a Ray Data one."""
    return bool(getattr(ds, "in_process", False))


def tables(ds: Any) -> list[pa.Table]:
    """The blocks of ``ds`` as Arrow tables, in order: fetched from Ray's object store, or as they are in process."""
    refs = ds.to_arrow_refs()
    if in_process(ds):
        return list(refs)
    import ray

    return ray.get(refs)


def from_tables(ds: Any, parts: list[pa.Table]) -> Any:
    """A dataset of ``parts`` that runs where ``ds`` runs (Ray Data, or in process)."""
    if in_process(ds):
        return type(ds)(parts)
    import ray.data

    return ray.data.from_arrow(parts)


class LocalRef:
    """What :func:`share` hands over in process: the value, named by a token unique to this sharing.

    Like a Ray object reference, its ``repr`` (part of the key under which a process caches the
    operators built with it, :mod:`pipelines.chain`) names this one sharing, never the value's
    content: a table's ``repr`` shows a few rows only, so two runs' dedup tables could look alike,
    and a model's bytes would be copied into a string many times their size.
    """

    __slots__ = ("_token", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._token = uuid.uuid4().hex

    def hex(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return f"LocalRef({self._token})"


def share(ds: Any, value: Any) -> Any:
    """``value`` for the passes over ``ds``: put in Ray's object store once (each worker process fetches it
    once, :meth:`GlobalStage.shared`), or wrapped in a :class:`LocalRef` when ``ds`` runs in process."""
    if in_process(ds):
        return LocalRef(value)
    import ray

    return ray.put(value)


def fetch(value: Any) -> Any:
    """The value :func:`share` handed over (fetched from Ray's object store for a reference); a plain value
    as it is."""
    if isinstance(value, LocalRef):
        return value.value
    ray = sys.modules.get("ray")  # an object reference exists only where Ray is imported
    if ray is not None and isinstance(value, ray.ObjectRef):
        return ray.get(value)
    return value


@dataclass
class Prepared:
    """What :meth:`GlobalStage.prepare` hands on.

    Args:
        shared: values the row-wise pass reads with :meth:`GlobalStage.shared` (large ones through
            :func:`share`: under Ray object-store references, fetched once per worker process).
        report: the stage's entry in the manifest (``stages[].report``).
    """

    shared: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


#: values fetched from the object store in this worker process, by (reference, conversion)
_SHARED: dict[tuple[str, str], Any] = {}
_SHARED_MAX = 8


class GlobalStage(Operator):
    """A whole-dataset step (dedup, percentile thresholds, rankings).

    The runner first calls :meth:`prepare` with the stage's input as a Ray Data dataset
    (the previous checkpoint) and a :class:`StageContext`; it runs shuffles/aggregations and
    returns :class:`Prepared` data for the row-wise pass and a report for the manifest. The
    runner then builds the operator with ``_shared=prepared.shared`` and applies it row-wise
    like any other stage; the operator reads what was shared with :meth:`shared`.
    """

    def __init__(self, *, _shared: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared_in = dict(_shared or {})
        self._shared_local: dict[tuple[str, str], Any] = {}

    def shared(self, name: str, convert: Callable[[Any], Any] | None = None) -> Any:
        """The value ``prepare`` shared as ``name``, passed through ``convert`` once.

        An object-store reference is fetched (and converted) once per worker process and kept
        for the operators that Ray Data builds per task; a plain value (or one shared in process, a
        :class:`LocalRef`) once per operator.
        """
        if name not in self._shared_in:
            raise RuntimeError(f"stage {self.stage!r}: {self.op_name} applied without its prepare() pass")
        value = self._shared_in[name]
        if isinstance(value, LocalRef):
            value = value.value
        conv = getattr(convert, "__qualname__", "") if convert else ""
        ray = sys.modules.get("ray")  # an object reference exists only where Ray is imported
        if ray is not None and isinstance(value, ray.ObjectRef):
            key = (value.hex(), conv)
            if key not in _SHARED:
                if len(_SHARED) >= _SHARED_MAX:
                    _SHARED.pop(next(iter(_SHARED)))
                data = ray.get(value)
                _SHARED[key] = convert(data) if convert else data
            return _SHARED[key]
        key = (name, conv)
        if key not in self._shared_local:
            self._shared_local[key] = convert(value) if convert else value
        return self._shared_local[key]

    @classmethod
    @abstractmethod
    def prepare(cls, ds: Any, params: dict[str, Any], ctx: StageContext) -> Prepared:
        """Run the whole-dataset pass over ``ds`` with the stage's ``params``."""


def _init_owner(cls: type) -> type:
    return next(k for k in cls.__mro__ if "__init__" in k.__dict__)


def check_params(cls: type[Operator], params: dict[str, Any]) -> None:
    """Raise ValueError naming every parameter of ``params`` that breaks ``cls``'s annotations."""
    given = {k: v for k, v in params.items() if k != "stage" and not k.startswith("_")}
    try:
        params_model(cls).model_validate(given)
    except ValidationError as e:
        raise ValueError(f"{cls.op_name or cls.__name__}: {describe(e)}") from None


#: parts of a pydantic error location that name a union member, not a parameter or key
_UNION_TAGS = {"float", "int", "str", "bool", "list", "tuple", "dict", "none"}


def problems(err: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors with union-member tags dropped from ``loc``, one per parameter: of a
    parameter's problems the most specific (deepest) one, for a union the member that got furthest."""
    best: dict[Any, dict[str, Any]] = {}
    for e in err.errors():
        tag = [isinstance(x, str) and ("[" in x or x in _UNION_TAGS) for x in e["loc"]]
        loc = tuple(x for x, t in zip(e["loc"], tag) if not t)
        key = tuple(e["loc"][: tag.index(True)]) if any(tag) else loc  # a union's members share one key
        if key not in best or len(loc) > len(best[key]["loc"]):
            best[key] = {**e, "loc": loc}
    return list(best.values())


def describe(err: ValidationError) -> str:
    """One line per parameter: ``name.key: message, got value``."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}, got {e.get('input')!r}" for e in problems(err))


@functools.cache
def params_model(cls: type[Operator]) -> type[BaseModel]:
    """A pydantic model of the recipe parameters, read from the operator's ``__init__``.

    Keyword-only parameters of every ``__init__`` in the class hierarchy are parameters
    (``stage`` is set by the runner, names starting with ``_`` are internal), so the
    constructor stays the single source of truth for names, types, defaults and
    constraints (``Annotated[int, Field(ge=1)]``): the recipe validator reports a
    violation with its YAML line, and a Python caller gets the same check (:func:`check_params`).
    """
    fields: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is not p.KEYWORD_ONLY or p.name == "stage" or p.name.startswith("_"):
                continue
            if p.name in fields:
                continue
            ann = p.annotation if p.annotation is not p.empty else Any
            if isinstance(ann, str):
                ann = eval(ann, vars(inspect.getmodule(klass)))  # noqa: S307 - our own annotations
            fields[p.name] = (ann, ... if p.default is p.empty else p.default)
    return create_model(f"{cls.op_name or cls.__name__}_params", __config__=ConfigDict(extra="forbid"), **fields)
