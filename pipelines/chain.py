"""Row-wise execution: a segment's consecutive operators fused into one Ray Data task per batch,
model operators as actor pools (a GPU each when the cluster has them), errors quarantined."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from operators import load_all
from operators.base import REGISTRY, DataMismatch, in_process
from pipelines.recipe import Recipe, stage_params
from pipelines.stats import node_id, report
from storage.schema import ERROR, REASON, STAGE, with_column

logger = logging.getLogger(__name__)

_CHAINS: dict[str, list] = {}
#: keys of the chains in _CHAINS that hold models (at most one is kept)
_MODEL_CHAINS: set[str] = set()


def _chain(key: str, specs: list[tuple[str, str, dict]], models: bool = False) -> list:
    """Operators for ``specs``, built once per process and reused across tasks and runs.

    A long-lived process (a Ray worker, or the driver of in-process runs) serves many runs: it keeps
    the newest 8 chains, and of the chains holding ``models`` only the newest one (a model stage's chain
    is done with before the next one is built, in an actor or in process; each may hold gigabytes)."""
    ops = _CHAINS.get(key)
    if ops is None:
        if models:
            for old in _MODEL_CHAINS - {key}:
                _CHAINS.pop(old, None)
            _MODEL_CHAINS.clear()
            _MODEL_CHAINS.add(key)
        if len(_CHAINS) >= 8:
            _MODEL_CHAINS.discard(oldest := next(iter(_CHAINS)))
            _CHAINS.pop(oldest)
        load_all()
        ops = [(name, on_error, REGISTRY[op](stage=name, **kw)) for op, name, on_error, kw in specs]
        _CHAINS[key] = ops
    return ops


def forget_chains(keep_models: bool = False) -> None:
    """Drop the operators this process built (all, or all but the newest model chain)."""
    for key in list(_CHAINS):
        if not (keep_models and key in _MODEL_CHAINS):
            _CHAINS.pop(key)
            _MODEL_CHAINS.discard(key)


def run_chain(batch: pa.Table, *, key: str, specs: list, stats=None) -> pa.Table:
    """Apply consecutive row-wise operators to one batch, timing each and reporting to ``stats``.

    An operator that raises quarantines the batch's live rows it applies to (reason
    ``operator_error``, the message in ``error``) unless its stage says ``on_error: fail`` or the
    error is a :class:`~operators.base.DataMismatch` (the data does not fit the stage's configuration).
    """
    times: dict[str, float] = {}
    added: dict[str, int] = {}  # rows appended by adds_rows operators (synthetic rows)
    metrics: dict[str, dict] = {}
    n = batch.num_rows
    first_id = f"{batch.column('id')[0].as_py()}:{n}" if n else ""  # names the batch across task retries
    for name, on_error, op in _chain(key, specs):
        t0 = time.perf_counter()
        before = batch.num_rows
        try:
            batch = op(batch)
        except Exception as e:
            if on_error == "fail" or isinstance(e, DataMismatch):
                raise
            batch = _quarantine(batch, op, name, e)
        times[name] = time.perf_counter() - t0
        if batch.num_rows != before:
            added[name] = batch.num_rows - before
        if m := op.drain_metrics():
            metrics[name] = m
    if stats is not None and (added or metrics):
        report(stats, "add_generated", added, metrics, first_id)
    if stats is not None and times:
        report(stats, "add_stage", times, n, node_id())
    return batch


def _quarantine(batch: pa.Table, op, stage: str, exc: Exception) -> pa.Table:
    active = op.active(batch)
    logger.warning("stage %s raised on a batch of %d rows: %s", stage, int(active.sum()), exc)
    mask = pa.array(active)
    batch = with_column(batch, REASON, pc.if_else(mask, "operator_error", batch.column(REASON)))
    batch = with_column(batch, STAGE, pc.if_else(mask, stage, batch.column(STAGE)))
    msg = f"{type(exc).__name__}: {exc}"[:2000]
    return with_column(batch, ERROR, pc.if_else(mask, msg, batch.column(ERROR)))


def apply_stages(ds, recipe: Recipe, start: int, end: int, extra: dict[str, Any], stats, gpus: int):
    """Chain the segment's operators onto ``ds``: CPU operators fused into tasks, model operators as actor pools."""
    groups: list[tuple[bool, list]] = []
    for i in range(start, end):
        st = recipe.stages[i]
        cls = REGISTRY[st.op]
        kw = {**stage_params(st), **(extra if i == start else {})}
        spec = (st.op, st.stage_name, st.on_error, kw)
        heavy = cls.uses_accelerator
        if groups and groups[-1][0] == heavy and not heavy:
            groups[-1][1].append(spec)
        else:
            groups.append((heavy, [spec]))
    # CPU actor pools share the CPUs with the read and fused tasks: each asks for at most its share of
    # all but one CPU, so two model stages on a 2-CPU machine cannot starve the reads (a deadlock)
    pools = sum(heavy for heavy, _ in groups)
    cpu_share = min(1.0, max(0.1, (_cluster_cpus() - 1) / max(1, pools)))
    # in process the model stages run one after another, each on every CPU; under Ray they stream side by side
    sharing = 1 if in_process(ds) else pools
    for heavy, specs in groups:
        # ObjectRefs repr with their ids; the files a stage reads are part of the key, so a worker that
        # outlives a run never reuses an operator built from an older version of a model, list or eval set
        key = hashlib.sha256((repr(specs) + repr([file_state(op, kw) for op, _, _, kw in specs])).encode()).hexdigest()
        on_gpu = bool(gpus) and REGISTRY[specs[0][0]].wants_accelerator(specs[0][3])
        if not heavy:
            ds = ds.map_batches(
                run_chain, batch_format="pyarrow", fn_kwargs={"key": key, "specs": specs, "stats": stats}
            )
        else:
            ds = ds.map_batches(
                ModelChain,
                batch_format="pyarrow",
                fn_constructor_kwargs={"key": key, "specs": specs, "stats": stats, "pools": 0 if on_gpu else sharing},
                concurrency=gpus if on_gpu else 1,
                num_gpus=1 if on_gpu else 0,
                num_cpus=1 if on_gpu else cpu_share,
                batch_size=256,
            )
    return ds


def file_state(op: str, params: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every local file a stage reads: those its parameters name and those it uses
    by default (:func:`pipelines.resume.named_files`; a cheap stat, where the resume fingerprint hashes)."""
    from pipelines.resume import local_path, named_files

    out = []
    for _, value in named_files(op, params):
        path = local_path(value)
        if path is not None and os.path.isfile(path):
            st = os.stat(path)
            out.append((os.path.realpath(path), st.st_size, st.st_mtime_ns))
    return out


def _cluster_cpus() -> int:
    from pipelines.cluster import cpus

    return cpus()


def model_threads(node_cpus: int, pools: int) -> int:
    """Torch threads of one CPU model actor when ``pools`` model stages share a node's CPUs."""
    return max(1, node_cpus // max(1, pools))


def set_torch_threads(n: int) -> None:
    """Intra-op threads of this process's torch (process-wide: call it in an actor, not a shared task worker)."""
    import torch

    if torch.get_num_threads() != n:
        logger.info("model actor: %d torch threads (was %d)", n, torch.get_num_threads())
        torch.set_num_threads(n)


class ModelChain:
    """Actor-pool wrapper for model operators: loads the model once per actor.

    On CPU (``pools`` > 0, the number of model stages in the segment) the actor's torch uses its share
    of the node's CPUs, not the one thread Ray's ``OMP_NUM_THREADS`` gives an actor: the actor reserves
    less than a CPU so reads cannot starve, but a model forward pass is where a segment's time goes.
    """

    def __init__(self, key: str, specs: list, stats=None, pools: int = 0) -> None:
        self.key = key
        self.specs = specs
        self.stats = stats
        _chain(key, specs, models=True)
        if pools and "torch" in sys.modules:  # a fastText-only chain does not pay torch's import
            from pipelines.cluster import node_cpus

            set_torch_threads(model_threads(node_cpus(), pools))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_chain(batch, key=self.key, specs=self.specs, stats=self.stats)
