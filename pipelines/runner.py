"""The runner: turns a validated recipe into Ray Data plans, checkpoints, shards and a manifest.

A recipe's stages run as *segments*: a segment is one streaming Ray Data plan (read or
previous checkpoint → row-wise operators → write). A whole-dataset stage (dedup,
thresholds) starts a new segment, because its first pass reads the finished input of
the stage. Each segment but the last writes a checkpoint under ``OUT/_stages/NN-name/``
(``live/`` and ``removed/`` plus a ``_SUCCESS`` record); the last writes the run's
``shards/`` and ``removed/`` directly. Re-running the same recipe skips every segment
whose ``_SUCCESS`` matches the recipe's fingerprint up to that stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators import load_all
from operators.base import REGISTRY, GlobalStage
from pipelines.readers import INPUT_ERRORS
from pipelines.recipe import Recipe, duplicate_ids_fail, stage_params
from pipelines.resume import FileHashes, fingerprint, input_state, sluice_version, stage_files, what_changed
from pipelines.stats import sum_nested
from storage.fs import expand_input, resolve
from storage.manifest import ConservationError, RunContents, assemble, write_manifest
from storage.run import PROBE, REMOVED, SHARDS, STAGES, SUCCESS, RunDir, UnsafePathError, atomic_write
from storage.schema import ERROR, INPUT_STAGE, INTERNAL_COLUMNS, READ_SCHEMA, REASON, STAGE, with_column
from storage.shards import CheckpointLayout, ParquetFiles, RunLayout, ShardSink
from storage.views import repeated_ids

logger = logging.getLogger(__name__)

STAGES_DIR = STAGES
CHECKPOINT_BYTES = 128 << 20


class InputError(RuntimeError):
    """The inputs are not what a run can trust: repeated ids, or files that could not be read completely."""


@dataclass(frozen=True)
class Segment:
    """Stages ``start``..``end`` (exclusive) of the recipe run as one streaming plan."""

    index: int
    start: int
    end: int
    name: str


def plan_segments(recipe: Recipe) -> list[Segment]:
    """Split the stage list before every whole-dataset stage (a leading one gets a read-only segment)."""
    load_all()
    n = len(recipe.stages)
    globals_ = [i for i, s in enumerate(recipe.stages) if issubclass(REGISTRY[s.op], GlobalStage)]
    starts = sorted({0, *globals_})
    bounds = ([(0, 0)] if 0 in globals_ else []) + list(zip(starts, [*starts[1:], n]))
    return [Segment(k, a, b, recipe.stages[b - 1].stage_name if b > a else "read") for k, (a, b) in enumerate(bounds)]


# ---------------------------------------------------------------- row-wise execution
_CHAINS: dict[str, list] = {}


def _chain(key: str, specs: list[tuple[str, str, dict]]) -> list:
    """Operators for ``specs``, built once per worker process and reused across tasks."""
    ops = _CHAINS.get(key)
    if ops is None:
        if len(_CHAINS) >= 8:  # a long-lived worker serves many runs: keep the newest few
            _CHAINS.pop(next(iter(_CHAINS)))
        load_all()
        ops = [(name, on_error, REGISTRY[op](stage=name, **kw)) for op, name, on_error, kw in specs]
        _CHAINS[key] = ops
    return ops


def run_chain(batch: pa.Table, *, key: str, specs: list, stats=None) -> pa.Table:
    """Apply consecutive row-wise operators to one batch, timing each and reporting to ``stats``.

    An operator that raises quarantines the batch's live rows it applies to (reason
    ``operator_error``, the message in ``error``) unless its stage says ``on_error: fail``.
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
            if on_error == "fail":
                raise
            batch = _quarantine(batch, op, name, e)
        times[name] = time.perf_counter() - t0
        if batch.num_rows != before:
            added[name] = batch.num_rows - before
        if m := op.drain_metrics():
            metrics[name] = m
    if stats is not None and (added or metrics):
        import ray

        ray.get(stats.add_generated.remote(added, metrics, first_id))
    if stats is not None and times:
        import ray

        from pipelines.stats import node_id

        ray.get(stats.add_stage.remote(times, n, node_id()))
    return batch


def _quarantine(batch: pa.Table, op, stage: str, exc: Exception) -> pa.Table:
    active = op.active(batch)
    logger.warning("stage %s raised on a batch of %d rows: %s", stage, int(active.sum()), exc)
    mask = pa.array(active)
    batch = with_column(batch, REASON, pc.if_else(mask, "operator_error", batch.column(REASON)))
    batch = with_column(batch, STAGE, pc.if_else(mask, stage, batch.column(STAGE)))
    msg = f"{type(exc).__name__}: {exc}"[:2000]
    return with_column(batch, ERROR, pc.if_else(mask, msg, batch.column(ERROR)))


def _apply_stages(ds, recipe: Recipe, seg: Segment, extra: dict[str, Any], stats, gpus: int):
    """Chain the segment's operators onto ``ds``: CPU operators fused into tasks, model operators as actor pools."""
    groups: list[tuple[bool, list]] = []
    for i in range(seg.start, seg.end):
        st = recipe.stages[i]
        cls = REGISTRY[st.op]
        kw = {**stage_params(st), **(extra if i == seg.start else {})}
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
    for heavy, specs in groups:
        key = hashlib.sha256(repr(specs).encode()).hexdigest()  # ObjectRefs repr with their ids
        on_gpu = bool(gpus) and REGISTRY[specs[0][0]].wants_accelerator(specs[0][3])
        if not heavy:
            ds = ds.map_batches(
                run_chain, batch_format="pyarrow", fn_kwargs={"key": key, "specs": specs, "stats": stats}
            )
        else:
            ds = ds.map_batches(
                ModelChain,
                batch_format="pyarrow",
                fn_constructor_kwargs={"specs": specs, "stats": stats},
                concurrency=gpus if on_gpu else 1,
                num_gpus=1 if on_gpu else 0,
                num_cpus=1 if on_gpu else cpu_share,
                batch_size=256,
            )
    return ds


def _cluster_cpus() -> int:
    from pipelines.cluster import cpus

    return cpus()


class ModelChain:
    """Actor-pool wrapper for model operators: loads the model once per actor."""

    def __init__(self, specs: list, stats=None) -> None:
        self.key = f"model-{id(self)}"
        self.specs = specs
        self.stats = stats
        _chain(self.key, specs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_chain(batch, key=self.key, specs=self.specs, stats=self.stats)


# ---------------------------------------------------------------- checkpoints
def _files(root: str, sub: str) -> list[str]:
    return RunDir(root).parquet(sub)


def _read_checkpoint(root: str, sub: str):
    import ray.data

    files = _files(root, sub)
    if not files:
        return ray.data.from_arrow(READ_SCHEMA.empty_table())
    return ray.data.read_datasource(ParquetFiles(files), override_num_blocks=len(files))


def _rows(files: list[str]) -> int:
    fs, _ = resolve(files[0]) if files else (None, None)
    return sum(pq.read_metadata(fs.open_input_file(f)).num_rows for f in files) if files else 0


def _load_success(fs, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return None


def _save_json(fs, path: str, obj: dict) -> None:
    atomic_write(fs, path, json.dumps(obj, indent=2, default=str).encode())


def _verify(rd: RunDir, base: str, done: dict, final: bool) -> str | None:
    """Why a checkpoint's files differ from what its ``_SUCCESS`` recorded (None when they match).

    A checkpoint's ``live/`` and ``removed/`` (the final segment's ``shards/`` and ``removed/``)
    must hold exactly the recorded files with the recorded sizes and sha256: anything missing,
    extra (another run writing into the same directory), resized or rewritten is not trusted.
    """
    recorded = {f["path"]: f for f in [*done.get("files", []), *done.get("copied", [])]}
    subs = (SHARDS, REMOVED) if final else ("live", "removed")
    prefix = "" if base == rd.root else base[len(rd.root) + 1 :] + "/"
    found = [r[len(prefix) :] for sub in subs for r in rd.files(f"{prefix}{sub}")]
    extra = sorted(set(found) - set(recorded))
    missing = sorted(set(recorded) - set(found))
    if extra or missing:
        return f"{len(missing)} recorded file(s) missing, {len(extra)} unrecorded file(s) present"
    for rel, f in recorded.items():
        with rd.fs.open_input_stream(f"{base}/{rel}") as fh:
            data = fh.read()
        if len(data) != f["bytes"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
            return f"{rel} changed since it was written"
    return None


def _rows_per_write(target_bytes: int, records: list[dict]) -> int:
    """Rows that fill about one target-size file, from the previous checkpoint's bytes per row."""
    if records:
        files = records[-1]["files"]
        rows = sum(f["rows"] for f in files)
        if rows:
            per_row = sum(f["bytes"] for f in files) / rows
            return max(1, int(target_bytes / per_row))
    return 50_000


def _num_partitions(rows: int) -> int:
    return max(2, min(200, rows // 250_000 + 1))


def check_output_writable(out_dir: str) -> None:
    """Fail before any work if the output directory cannot be created or written."""
    fs, root = resolve(out_dir)
    probe = f"{root}/{PROBE}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
    except OSError as e:
        raise OSError(f"output directory {out_dir!r} is not writable: {e}") from None
    finally:  # a full disk may have created the probe before refusing its bytes
        with contextlib.suppress(OSError, UnsafePathError):
            RunDir(out_dir).delete(PROBE)


def warn_if_short_of_space(out_dir: str, recipe: Recipe) -> int | None:
    """Warn before any work when a local output filesystem has less free space than the inputs take.

    A run writes about what it reads (zstd Parquet shards and removed rows, plus the checkpoint
    of each segment), so this is a hint, not a guarantee; a disk that fills up anyway fails the
    run with the filesystem's error, and re-running resumes from the last checkpoint. Returns the
    free bytes (None for object storage, where free space is not a notion).
    """
    import shutil

    if "://" in out_dir and not out_dir.startswith("file://"):
        return None
    _, root = resolve(out_dir)
    free = shutil.disk_usage(root).free
    need = 0
    for inp in recipe.inputs:
        fs, _ = resolve(inp.path)
        files = expand_input(inp.path)
        need += sum(i.size or 0 for i in fs.get_file_info(files)) if files else 0
    if free < need:
        logger.warning(
            "output %s has %.1f MB free but the inputs take %.1f MB; a run writes about as much as it reads "
            "(plus checkpoints) and may run out of space",
            out_dir,
            free / 2**20,
            need / 2**20,
        )
    return free


# ---------------------------------------------------------------- the run
def run(recipe: Recipe, out_dir: str | None = None, *, fresh: bool = False, recipe_text: str = "") -> dict:
    """Run ``recipe``; return the manifest.

    The output directory is claimed first (:meth:`storage.run.RunDir.claim`: it must be new,
    empty or Sluice's own, and overlap no input) and locked for the run's duration; ``fresh``
    deletes only what Sluice wrote there. Raises ConservationError if rows went missing and
    InputError for repeated ids or input files that could not be read completely.
    """
    out_dir = (out_dir or recipe.output.dir).rstrip("/")
    rd = RunDir(out_dir)
    rd.check_inputs([i.path for i in recipe.inputs])
    check_output_writable(out_dir)
    rd.claim([i.path for i in recipe.inputs])
    with rd.lock("sluice curate"):
        if fresh:
            n = rd.clear()
            logger.info("--fresh: deleted %d file(s) Sluice had written in %s", n, out_dir)
        return _run(recipe, rd, out_dir, recipe_text)


def _run(recipe: Recipe, rd: RunDir, out_dir: str, recipe_text: str) -> dict:
    import ray
    import ray.data

    from pipelines.cluster import accelerators, describe_cluster, init_ray

    warn_if_short_of_space(out_dir, recipe)
    fs, root = rd.fs, rd.root
    inputs = input_state(recipe)
    hashes = FileHashes(out_dir)
    files = stage_files(recipe, hashes)
    hashes.save()
    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # identical outputs across runs and resumes
    if not sys.stderr.isatty() and not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-second progress lines in logs
    gpus = accelerators()
    started = datetime.now(timezone.utc)
    t_run = time.perf_counter()

    segments = plan_segments(recipe)
    records: list[dict] = []
    prev: str | None = None
    for seg in segments:
        last = seg is segments[-1]
        ckdir = f"{root}/{STAGES_DIR}/{seg.index:02d}-{seg.name}"
        fp = fingerprint(recipe, seg.end, inputs, files)
        done = _load_success(fs, f"{ckdir}/{SUCCESS}")
        step = f"[{seg.index + 1}/{len(segments)}] {seg.name}"
        # a checkpoint is reused only in the same role: a last segment wrote the final outputs, not live/removed
        if done and done.get("fingerprint") == fp and done.get("final") == last:
            problem = _verify(rd, root if last else ckdir, done, last)
            if problem is None:
                logger.info("%s: checkpoint complete, skipped", step)
                records.append({**done, "dir": ckdir, "reused": True})
                prev = ckdir
                if seg.index == 0:
                    _check_ids(recipe, rd, root if last else ckdir, records[0], last)
                continue
            logger.warning("%s: checkpoint not trusted (%s); running it again", step, problem)
        elif done:
            same = done.get("fingerprint") == fp
            why = "its role changed" if same else what_changed(recipe, seg.end, done, inputs, files)
            logger.warning("%s: checkpoint out of date (%s); running it again", step, why)
        rd.delete(ckdir)
        names = [s.stage_name for s in recipe.stages[seg.start : seg.end]] or ["read"]
        logger.info("[%d/%d] running %s", seg.index + 1, len(segments), " → ".join(names))
        try:
            rec = _run_segment(recipe, seg, prev, ckdir, rd, last, records, gpus)
        except OSError as e:  # a full disk, lost permissions, object storage errors: say where, and how to go on
            cause = getattr(e, "cause", None)  # a RayTaskError carries the task's own exception
            cause = cause if isinstance(cause, BaseException) else e
            raise OSError(
                f"{' → '.join(names)} failed writing to {out_dir!r}: {type(cause).__name__}: {cause}. "
                "Finished segments are checkpointed: run the same command again to resume."
            ) from e
        rec.update(fingerprint=fp, sluice=sluice_version(), recipe_fingerprint=recipe.fingerprint(seg.end))
        rec.update(inputs=inputs, files=rec["files"], stage_files=files[: seg.end])
        _save_json(fs, f"{ckdir}/{SUCCESS}", rec)
        records.append(rec)
        prev = ckdir
        if seg.index == 0:
            _check_ids(recipe, rd, root if last else ckdir, rec, last)
        # later segments depend on this one: drop their stale checkpoints
        for later in segments[seg.index + 1 :]:
            rd.delete(f"{root}/{STAGES_DIR}/{later.index:02d}-{later.name}")

    manifest = build_manifest(
        recipe, out_dir, records, started, time.perf_counter() - t_run, recipe_text, describe_cluster()
    )
    write_manifest(out_dir, manifest)
    if not manifest["conservation"]["ok"]:
        raise ConservationError(manifest["conservation"]["message"])
    _fail_on_input_errors(recipe, manifest)
    return manifest


def _check_ids(recipe: Recipe, rd: RunDir, base: str, rec: dict, final: bool) -> None:
    """Fail before any later segment when two records share an id (unless the recipe removes repeats)."""
    if not duplicate_ids_fail(recipe):
        return
    paths = [f"{base}/{f['path']}" for f in rec["files"]]
    total, examples = repeated_ids(paths)
    if not total:
        return
    shown = "; ".join(
        f"id {i!r} appears {n} times in {a}" if a == b else f"id {i!r} is in {a} and in {b}" for i, n, a, b in examples
    )
    raise InputError(
        f"{total} id(s) are used by more than one record: {shown}. Ids must be unique; fix the inputs, or set "
        "`on_duplicate_id: remove` on the inputs to keep the first record of each id (later ones go to removed/ "
        "as input_duplicate_id)."
    )


def _fail_on_input_errors(recipe: Recipe, manifest: dict) -> None:
    tolerated = set()
    for inp in recipe.inputs:
        if inp.on_input_error == "continue":
            scheme = inp.path.split("://", 1)[0] if "://" in inp.path else None
            tolerated |= {f"{scheme}://{p}" if scheme and scheme != "file" else p for p in expand_input(inp.path)}
    bad = [e for e in manifest.get("input_errors", []) if e["source"] not in tolerated]
    if bad:
        shown = "; ".join(f"{e['source']}: {e['error']}" for e in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise InputError(
            f"{len(bad)} input file(s) could not be read completely ({shown}). Everything that was read is written "
            "and counted (manifest.json `input_errors`, removed/stage=input); set `on_input_error: continue` on "
            "the input to accept this."
        )


def _run_segment(recipe, seg, prev, ckdir, rd: RunDir, last, records, gpus) -> dict:
    import ray
    import ray.data

    from pipelines.cluster import lost_workers
    from pipelines.readers import InputDatasource
    from pipelines.stats import RunStats

    out_dir = rd.uri
    t0 = time.perf_counter()
    lost_before = lost_workers()
    stats = RunStats.remote()
    if prev is None:
        source = InputDatasource(recipe.inputs, stats)
        ds = ray.data.read_datasource(source, override_num_blocks=max(1, len(source.get_read_tasks(1))))
        rows_in = None
    else:
        ds = _read_checkpoint(prev, "live")
        rows_in = records[-1]["live_rows"]
    extra: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    prepare_s = 0.0
    if seg.end > seg.start:
        first = recipe.stages[seg.start]
        cls = REGISTRY[first.op]
        if issubclass(cls, GlobalStage):
            tp = time.perf_counter()
            extra, report = cls.prepare(ds, stage_params(first), _num_partitions(rows_in or 0))
            prepare_s = time.perf_counter() - tp
            reports[first.stage_name] = report
            ds = _read_checkpoint(prev, "live")
    ds = _apply_stages(ds, recipe, seg, extra, stats, gpus)

    copied: list[dict] = []
    if last:
        # derived outputs are rebuilt from checkpoints: clear them, copy earlier removals, then write
        for d in (SHARDS, REMOVED):
            rd.delete(d)
        for rec in records:
            copied += [f.__dict__ for f in _copy_removed(rec["dir"], out_dir)]
        target = int(recipe.output.shard_mb * (1 << 20))
        sink = ShardSink(out_dir, RunLayout(INTERNAL_COLUMNS), target, _rows_per_write(target, records))
    else:
        sink = ShardSink(ckdir, CheckpointLayout(), CHECKPOINT_BYTES, _rows_per_write(CHECKPOINT_BYTES, records))
    ds.write_datasink(sink)
    snap = ray.get(stats.snapshot.remote())
    ray.kill(stats)
    seconds = dict(snap["seconds"])
    if seg.end > seg.start and prepare_s:
        seconds[recipe.stages[seg.start].stage_name] = seconds.get(recipe.stages[seg.start].stage_name, 0) + prepare_s
    lost_after = lost_workers()
    lost = None if lost_before is None or lost_after is None else len(lost_after - lost_before)
    if lost:
        logger.warning("segment %s: %d Ray worker(s) died; Ray re-ran their tasks", seg.name, lost)
    live = [f for f in sink.files if not f.partition.startswith("removed")]
    rec = {
        "final": last,
        "segment": seg.index,
        "name": seg.name,
        "dir": ckdir,
        "stages": [s.stage_name for s in recipe.stages[seg.start : seg.end]],
        "read": snap["read"] if prev is None else None,
        "rows_in": rows_in if prev is not None else sum(snap["read"].values()),
        "live_rows": sum(f.rows for f in live),
        "seconds": seconds,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "nodes": len(snap["nodes"]),
        "workers_lost": lost,
        "reports": reports,
        "added": snap["added"],
        "metrics": snap["metrics"],
        "files": [f.__dict__ for f in sink.files],
        "copied": copied,
    }
    logger.info("      done in %.1fs: %s rows live", rec["wall_seconds"], f"{rec['live_rows']:,}")
    return rec


def _copy_removed(ckdir: str, out_dir: str) -> list:
    """Copy a checkpoint's removed rows into the run's ``removed/stage=<s>/`` directories; return the files."""
    files = _files(ckdir, "removed")
    if not files:
        return []
    fs, _ = resolve(out_dir)
    sink = ShardSink(out_dir, RunLayout(INTERNAL_COLUMNS), 256 << 20)
    return sink.write_now(pq.read_table(fs.open_input_file(f)) for f in files)


# ---------------------------------------------------------------- manifest
def build_manifest(
    recipe: Recipe,
    out_dir: str,
    records: list[dict],
    started,
    seconds: float,
    recipe_text: str,
    cluster: dict | None = None,
) -> dict:
    """Assemble manifest.json from segment records and the written files (counts read from Parquet footers).

    ``cluster`` (nodes, CPUs, GPUs of the Ray cluster) is recorded as given; every segment
    records how many nodes ran its read and stage tasks (``nodes``), how many Ray workers died
    while it ran (``workers_lost``: their tasks were re-run; None where Ray could not tell, or for
    a checkpoint written before this was recorded) and whether this run reused its checkpoint
    instead of running it (``reused``, after a resume).
    """
    contents = RunContents.read(out_dir)
    read = sum((records[0]["read"] or {}).values())
    by_stage = contents.removed_by
    seconds_by: dict[str, float] = {}
    reports: dict[str, Any] = {}
    added_by: dict[str, int] = {}  # synthetic rows appended per stage
    metrics_by: dict[str, dict] = {}  # e.g. tokens generated and seconds per backend
    for rec in records:
        for k, v in rec["seconds"].items():
            seconds_by[k] = seconds_by.get(k, 0.0) + v
        reports.update(rec["reports"])
        for k, v in rec.get("added", {}).items():
            added_by[k] = added_by.get(k, 0) + v
        for k, v in rec.get("metrics", {}).items():
            metrics_by[k] = sum_nested(metrics_by.get(k, {}), v)
    rows = read - sum(by_stage.get(INPUT_STAGE, {}).values())
    stages = [
        {
            "stage": INPUT_STAGE,
            "op": "read",
            "rows_in": read,
            "rows_out": rows,
            "removed": by_stage.get(INPUT_STAGE, {}),
            "seconds": None,
        }
    ]
    for st in recipe.stages:
        gone = by_stage.get(st.stage_name, {})
        plus = added_by.get(st.stage_name, 0)
        out = rows + plus - sum(gone.values())
        entry = {
            "stage": st.stage_name,
            "op": st.op,
            "rows_in": rows,
            "rows_out": out,
            "removed": gone,
            "seconds": round(seconds_by.get(st.stage_name, 0.0), 3),
            "report": reports.get(st.stage_name),
        }
        if plus:  # rows_out = rows_in + added - removed
            entry["added"] = plus
        if st.stage_name in metrics_by:
            entry["report"] = {**(entry["report"] or {}), "generation": metrics_by[st.stage_name]}
        stages.append(entry)
        rows = out
    segments = [
        {
            **{k: r[k] for k in ("segment", "name", "stages", "wall_seconds")},
            "nodes": r.get("nodes"),
            "workers_lost": r.get("workers_lost"),
            "reused": r.get("reused", False),
        }
        for r in records
    ]
    head = {
        "recipe": recipe.model_dump(),
        "recipe_text": recipe_text,
        "recipe_hash": recipe.fingerprint(),
    }
    return assemble(
        contents,
        head=head,
        started=started,
        seconds=seconds,
        stages=stages,
        read=read,
        synthetic=sum(added_by.values()),
        extra={"cluster": cluster, "segments": segments},
        input_errors=_input_errors(out_dir, records[0]["read"] or {}),
    )


def _input_errors(out_dir: str, read_per_file: dict[str, int]) -> list[dict]:
    """Input files that could not be read completely, with the records read before the break."""
    from storage.views import connect

    con = connect(out_dir, manifest=None)
    rows = con.execute(
        f"SELECT source, reason, error FROM removed WHERE stage = '{INPUT_STAGE}' AND reason IN "
        f"({', '.join(repr(r) for r in INPUT_ERRORS)}) ORDER BY source"
    ).fetchall()
    con.close()
    return [
        {"source": src, "reason": why, "records_read": max(0, read_per_file.get(src, 1) - 1), "error": msg}
        for src, why, msg in rows
    ]
