"""The runner: turns a validated recipe into Ray Data plans, checkpoints, shards and a manifest.

A recipe's stages run as segments (:mod:`pipelines.segments`), each one streaming Ray Data
plan whose row-wise operators :mod:`pipelines.chain` fuses. Re-running the same recipe skips
every segment whose ``_SUCCESS`` record still matches its fingerprint (:mod:`pipelines.resume`)
and whose files are the ones it recorded. The run directory is claimed and locked first
(:mod:`storage.run`); the manifest is assembled from what is on disk (:mod:`storage.manifest`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Any

from operators.base import REGISTRY
from pipelines.readers import INPUT_ERRORS
from pipelines.recipe import Recipe, duplicate_ids_fail, stage_params
from pipelines.resume import FileHashes, fingerprint, input_state, sluice_version, stage_files, what_changed
from pipelines.segments import SegmentRecord, plan_segments, run_segment
from pipelines.stats import sum_nested
from storage.fs import resolve
from storage.manifest import ConservationError, RunContents, assemble, write_manifest
from storage.run import PROBE, STAGES, RunDir, UnsafePathError
from storage.schema import INPUT_STAGE
from storage.views import repeated_ids

logger = logging.getLogger(__name__)

__all__ = ["ConservationError", "InputError", "build_manifest", "plan_segments", "run"]


class InputError(RuntimeError):
    """The inputs are not what a run can trust: repeated ids, or files that could not be read completely."""


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


def warn_if_short_of_space(out_dir: str, inputs: dict[str, list]) -> int | None:
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
    need = sum(size or 0 for size, _ in inputs.values())  # the input listing's sizes (see input_state)
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
def run(
    recipe: Recipe,
    out_dir: str | None = None,
    *,
    fresh: bool = False,
    recipe_text: str = "",
    engine: str | None = None,
) -> dict:
    """Run ``recipe``; return the manifest.

    The output directory is claimed first (:meth:`storage.run.RunDir.claim`: it must be new,
    empty or Sluice's own, and overlap no input) and locked for the run's duration; ``fresh``
    deletes only what Sluice wrote there. ``engine`` is ``ray``, ``local`` (in this process, no
    Ray: :mod:`pipelines.local`) or ``auto`` (the default, or ``SLUICE_ENGINE``: in process for
    small inputs when no Ray cluster is joined or running). Raises ConservationError if rows went
    missing and InputError for repeated ids or input files that could not be read completely.
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
        return _run(recipe, rd, out_dir, recipe_text, engine)


def _run(recipe: Recipe, rd: RunDir, out_dir: str, recipe_text: str, engine: str | None) -> dict:
    from pipelines.local import LocalEngine, choose_engine, input_bytes
    from pipelines.readers import InputDatasource
    from pipelines.segments import RayEngine

    source = InputDatasource(recipe.inputs)  # the one listing of the inputs: read, fingerprinted, sized
    inputs = input_state(source.tasks)
    warn_if_short_of_space(out_dir, inputs)
    hashes = FileHashes(out_dir)
    files = stage_files(recipe, hashes)
    hashes.save()
    chosen = choose_engine(engine, input_bytes(inputs))
    logger.info("engine: %s", "in this process (no Ray)" if chosen == "local" else "Ray")
    executor = LocalEngine() if chosen == "local" else RayEngine()
    gpus = executor.start()
    started = datetime.now(timezone.utc)
    t_run = time.perf_counter()

    records = _run_segments(recipe, rd, out_dir, inputs, files, gpus, source, executor)
    manifest = build_manifest(
        recipe, out_dir, records, started, time.perf_counter() - t_run, recipe_text, executor.describe()
    )
    write_manifest(out_dir, manifest)
    if not manifest["conservation"]["ok"]:
        raise ConservationError(manifest["conservation"]["message"])
    _fail_on_input_errors(source.tasks, manifest)
    return manifest


def _run_segments(
    recipe: Recipe, rd: RunDir, out_dir: str, inputs: dict, files: list, gpus: int, source, engine
) -> list[SegmentRecord]:
    """Run (or reuse the complete checkpoint of) every segment in order; their records."""
    from pipelines import stats as run_stats

    root = rd.root
    segments = plan_segments(recipe)
    records: list[SegmentRecord] = []
    stats = None  # the run's statistics (under Ray an actor), started when a segment first runs
    finished = False
    try:
        for seg in segments:
            last = seg is segments[-1]
            ckdir = f"{root}/{STAGES}/{seg.index:02d}-{seg.name}"
            fp = fingerprint(recipe, seg.end, inputs, files)
            done = SegmentRecord.load(rd, ckdir)
            step = f"[{seg.index + 1}/{len(segments)}] {seg.name}"
            # a checkpoint is reused only in the same role: a last segment wrote the final outputs, not live/removed
            if done and done.fingerprint == fp and done.final == last:
                problem = done.problem(rd)
                if problem is None:
                    logger.info("%s: checkpoint complete, skipped", step)
                    done.reused = True
                    records.append(done)
                    if seg.index == 0:
                        _check_ids(recipe, rd, done)
                    continue
                logger.warning("%s: checkpoint not trusted (%s); running it again", step, problem)
            elif done:
                same = done.fingerprint == fp
                why = "its role changed" if same else what_changed(recipe, seg.end, done, inputs, files)
                logger.warning("%s: checkpoint out of date (%s); running it again", step, why)
            rd.delete(ckdir)
            names = [s.stage_name for s in recipe.stages[seg.start : seg.end]] or ["read"]
            logger.info("[%d/%d] running %s", seg.index + 1, len(segments), " → ".join(names))
            try:
                stats = stats or run_stats.start(in_process=engine.name == "local")
                rec = run_segment(recipe, seg, ckdir, rd, last, records, gpus, source, stats, engine)
            except OSError as e:  # a full disk, lost permissions, object storage errors: say where, and how to go on
                cause = getattr(e, "cause", None)  # a RayTaskError carries the task's own exception
                cause = cause if isinstance(cause, BaseException) else e
                raise OSError(
                    f"{' → '.join(names)} failed writing to {out_dir!r}: {type(cause).__name__}: {cause}. "
                    "Finished segments are checkpointed: run the same command again to resume."
                ) from e
            rec.fingerprint, rec.sluice, rec.recipe_fingerprint = fp, sluice_version(), recipe.fingerprint(seg.end)
            rec.inputs, rec.stage_files = inputs, files[: seg.end]
            rec.save(rd)
            records.append(rec)
            if seg.index == 0:
                _check_ids(recipe, rd, rec)
            # later segments depend on this one: drop their stale checkpoints
            for later in segments[seg.index + 1 :]:
                rd.delete(f"{root}/{STAGES}/{later.index:02d}-{later.name}")
        finished = True
    finally:
        run_stats.stop(stats, reuse=finished)
        engine.finish()
    return records


def _check_ids(recipe: Recipe, rd: RunDir, rec: SegmentRecord) -> None:
    """Fail before any later segment when two records share an id (unless the recipe removes repeats)."""
    if not duplicate_ids_fail(recipe):
        return
    total, examples = repeated_ids(rec.output_files(rd))
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


def _fail_on_input_errors(tasks: list, manifest: dict) -> None:
    tolerated = {t.uri for t in tasks if t.tolerate_errors}
    bad = [e for e in manifest.get("input_errors", []) if e["source"] not in tolerated]
    if bad:
        shown = "; ".join(f"{e['source']}: {e['error']}" for e in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise InputError(
            f"{len(bad)} input file(s) could not be read completely ({shown}). Everything that was read is written "
            "and counted (manifest.json `input_errors`, removed/stage=input); set `on_input_error: continue` on "
            "the input to accept this."
        )


# ---------------------------------------------------------------- manifest
def build_manifest(
    recipe: Recipe,
    out_dir: str,
    records: list[SegmentRecord],
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
    read = sum((records[0].read or {}).values())
    by_stage = contents.removed_by
    seconds_by: dict[str, float] = {}
    reports: dict[str, Any] = {}
    added_by: dict[str, int] = {}  # synthetic rows appended per stage
    metrics_by: dict[str, dict] = {}  # e.g. tokens generated and seconds per backend
    for rec in records:
        for k, v in rec.seconds.items():
            seconds_by[k] = seconds_by.get(k, 0.0) + v
        reports.update(rec.reports)
        for k, v in rec.added.items():
            added_by[k] = added_by.get(k, 0) + v
        for k, v in rec.metrics.items():
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
            cls = REGISTRY[st.op]
            done = cls.finish_metrics(metrics_by[st.stage_name], stage_params(st))
            entry["report"] = {**(entry["report"] or {}), cls.metrics_key: done}
        stages.append(entry)
        rows = out
    segments = [
        {
            "segment": r.segment,
            "name": r.name,
            "stages": r.stages,
            "wall_seconds": r.wall_seconds,
            "nodes": r.nodes,
            "workers_lost": r.workers_lost,
            "reused": r.reused,
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
        extra={"cluster": cluster, "segments": segments, "metadata": records[0].metadata},
        input_errors=_input_errors(out_dir, records[0].read or {}),
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
