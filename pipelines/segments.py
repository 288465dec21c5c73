"""Segments: the streaming plans a recipe runs as, their checkpoints and their records.

A segment is one plan (read or previous checkpoint → row-wise operators → write), run by an
engine: :class:`RayEngine` (Ray Data) or :class:`pipelines.local.LocalEngine` (in process). A
whole-dataset stage (dedup, thresholds) starts a new segment, because its first pass reads
the finished input of the stage. Each segment but the last writes a checkpoint under
``OUT/_stages/NN-name/`` (``live/`` and ``removed/`` plus a ``_SUCCESS`` record, a
:class:`SegmentRecord`); the last writes the run's ``shards/`` and ``removed/`` directly and
records them in its own ``_SUCCESS``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from operators import load_all
from operators.base import REGISTRY, GlobalStage, StageContext
from pipelines.chain import apply_stages
from pipelines.recipe import Recipe, stage_params
from pipelines.stats import report
from storage.fs import resolve
from storage.run import REMOVED, SHARDS, SUCCESS, RunDir, atomic_write
from storage.schema import INTERNAL_COLUMNS, READ_SCHEMA
from storage.shards import CheckpointLayout, ParquetFiles, RunLayout, ShardSink

logger = logging.getLogger(__name__)

CHECKPOINT_BYTES = 128 << 20
LIVE = "live"


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


@dataclass
class SegmentRecord:
    """What a finished segment wrote and measured: its ``_SUCCESS`` file, and the manifest's source.

    Args:
        final: whether it wrote the run's final ``shards/`` and ``removed/`` (else a checkpoint).
        segment, name, stages: which segment, and the stages it ran.
        dir: its checkpoint directory.
        read: rows read per input file (the first segment only).
        rows_in, live_rows: rows it received and rows still live after it.
        seconds: busy seconds per stage; ``wall_seconds``: the segment's wall time.
        nodes, workers_lost: Ray nodes that ran its tasks; workers that died meanwhile (None: unknown).
        reports: per stage, the whole-dataset step's report.
        added, metrics: synthetic rows added and counters (e.g. generation) per stage.
        files: the Parquet files it wrote (path relative to ``dir``, or to the run for a final segment),
            with rows, bytes and sha256; ``copied``: removed files a final segment copied from checkpoints.
        fingerprint: what it depends on (pipelines.resume), with its parts: ``sluice`` version,
            ``recipe_fingerprint``, ``inputs`` and ``stage_files``.
        metadata: the input metadata columns the first segment read (``RunMetadata.report()``:
            columns with types and origins, JSON-text fallbacks with reasons); None for later segments.
        reused: set when a run skipped it because the checkpoint was complete (not stored).
    """

    final: bool
    segment: int
    name: str
    dir: str
    stages: list[str]
    read: dict[str, int] | None = None
    rows_in: int = 0
    live_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    nodes: int | None = None
    workers_lost: int | None = None
    reports: dict[str, Any] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)
    copied: list[dict] = field(default_factory=list)
    fingerprint: str = ""
    sluice: str | None = None
    recipe_fingerprint: str | None = None
    inputs: dict[str, list] = field(default_factory=dict)
    stage_files: list[dict[str, str]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    reused: bool = False

    def save(self, rd: RunDir) -> None:
        body = {k: v for k, v in dataclasses.asdict(self).items() if k != "reused"}
        atomic_write(rd.fs, f"{self.dir}/{SUCCESS}", json.dumps(body, indent=2, default=str).encode())

    @classmethod
    def load(cls, rd: RunDir, ckdir: str) -> SegmentRecord | None:
        """The record in ``ckdir/_SUCCESS``; None when missing, unreadable or not a record (then not trusted)."""
        try:
            with rd.fs.open_input_stream(f"{ckdir}/{SUCCESS}") as f:
                body = json.loads(f.read())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{**{k: v for k, v in body.items() if k in known}, "dir": ckdir})
        except (OSError, ValueError, TypeError):
            return None

    def problem(self, rd: RunDir) -> str | None:
        """Why the files differ from what this record says (None when they match).

        A checkpoint's ``live/`` and ``removed/`` (a final segment's ``shards/`` and ``removed/``)
        must hold exactly the recorded files with the recorded sizes and sha256: anything missing,
        extra (another run writing into the same directory), resized or rewritten is not trusted.
        """
        base = rd.root if self.final else self.dir
        recorded = {f["path"]: f for f in [*self.files, *self.copied]}
        subs = (SHARDS, REMOVED) if self.final else (LIVE, REMOVED)
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

    def output_files(self, rd: RunDir) -> list[str]:
        """Absolute paths of the files it wrote."""
        base = rd.root if self.final else self.dir
        return [f"{base}/{f['path']}" for f in self.files]


# ---------------------------------------------------------------- engines
class RayEngine:
    """Runs a segment's reads, passes and writes as Ray Data plans (:class:`pipelines.local.LocalEngine`
    runs them in this process)."""

    name = "ray"

    def start(self) -> int:
        """Start or join Ray and set the Ray Data options every run uses; the cluster's GPUs."""
        import ray.data
        from ray.data.context import ShuffleStrategy

        from pipelines.cluster import accelerators, init_ray

        init_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # identical outputs across runs and resumes
        # Ray's default hash shuffle starts aggregator actors: seconds per shuffle whatever its size
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        if not sys.stderr.isatty() and not logger.isEnabledFor(logging.DEBUG):
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-second progress lines in logs
        return accelerators()

    def describe(self) -> dict:
        from pipelines.cluster import describe_cluster

        return describe_cluster()

    def read_input(self, source: Any):
        import ray.data

        return ray.data.read_datasource(source, override_num_blocks=max(1, len(source.get_read_tasks(1))))

    def read_checkpoint(self, ckdir: str, sub: str):
        """A checkpoint's ``live`` (or ``removed``) rows, in written order."""
        import ray.data

        files = RunDir(ckdir).parquet(sub)
        if not files:
            return ray.data.from_arrow(READ_SCHEMA.empty_table())
        return ray.data.read_datasource(ParquetFiles(files), override_num_blocks=len(files))

    def write(self, ds: Any, sink: ShardSink) -> None:
        ds.write_datasink(sink)

    def lost_workers(self) -> set[str] | None:
        from pipelines.cluster import lost_workers

        return lost_workers()

    def finish(self) -> None:
        """After a run: nothing to release here (Ray's actors end with their datasets)."""


def _rows_per_write(target_bytes: int, records: list[SegmentRecord]) -> int:
    """Rows that fill about one target-size file, from the previous checkpoint's bytes per row."""
    if records:
        files = records[-1].files
        rows = sum(f["rows"] for f in files)
        if rows:
            per_row = sum(f["bytes"] for f in files) / rows
            return max(1, int(target_bytes / per_row))
    return 50_000


def _num_partitions(rows: int) -> int:
    return max(2, min(200, rows // 250_000 + 1))


def _copy_removed(ckdir: str, out_dir: str) -> list:
    """Copy a checkpoint's removed rows into the run's ``removed/stage=<s>/`` directories; return the files."""
    files = RunDir(ckdir).parquet(REMOVED)
    if not files:
        return []
    fs, _ = resolve(out_dir)
    sink = ShardSink(out_dir, RunLayout(INTERNAL_COLUMNS), 256 << 20)
    return sink.write_now(pq.read_table(fs.open_input_file(f)) for f in files)


# ---------------------------------------------------------------- running one
def run_segment(
    recipe: Recipe,
    seg: Segment,
    ckdir: str,
    rd: RunDir,
    last: bool,
    records: list[SegmentRecord],
    gpus: int,
    source: Any,
    stats: Any,
    engine: Any,
) -> SegmentRecord:
    """Run ``seg`` after the segments in ``records`` (the previous one's checkpoint is its input; the
    first reads ``source``, the run's :class:`~pipelines.readers.InputDatasource`). ``stats`` is the
    run's :mod:`pipelines.stats` (one per run: under Ray an actor costs a worker process); ``engine``
    a :class:`RayEngine` or an in-process :class:`~pipelines.local.LocalEngine`."""
    out_dir = rd.uri
    prev = records[-1].dir if records else None
    t0 = time.perf_counter()
    lost_before = engine.lost_workers()
    report(stats, "reset")
    meta = None
    if prev is None:
        meta = source.scan_metadata()  # one metadata schema for every block, fixed before the read
        source.stats = stats
        ds = engine.read_input(source)
        rows_in = None
    else:
        ds = engine.read_checkpoint(prev, LIVE)
        rows_in = records[-1].live_rows
    extra: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    prepare_s = 0.0
    if seg.end > seg.start:
        first = recipe.stages[seg.start]
        cls = REGISTRY[first.op]
        if issubclass(cls, GlobalStage):
            tp = time.perf_counter()
            ctx = StageContext(_num_partitions(rows_in or 0), gpus, rows=rows_in)
            prepared = cls.prepare(ds, stage_params(first), ctx)
            prepare_s = time.perf_counter() - tp
            extra = {"_shared": prepared.shared}
            reports[first.stage_name] = prepared.report
            ds = engine.read_checkpoint(prev, LIVE)
    ds = apply_stages(ds, recipe, seg.start, seg.end, extra, stats, gpus)

    copied: list[dict] = []
    if last:
        # derived outputs are rebuilt from checkpoints: clear them, copy earlier removals, then write
        for d in (SHARDS, REMOVED):
            rd.delete(d)
        for rec in records:
            copied += [f.__dict__ for f in _copy_removed(rec.dir, out_dir)]
        target = int(recipe.output.shard_mb * (1 << 20))
        sink = ShardSink(out_dir, RunLayout(INTERNAL_COLUMNS), target, _rows_per_write(target, records))
    else:
        sink = ShardSink(ckdir, CheckpointLayout(), CHECKPOINT_BYTES, _rows_per_write(CHECKPOINT_BYTES, records))
    engine.write(ds, sink)
    snap = report(stats, "snapshot")
    seconds = dict(snap["seconds"])
    if seg.end > seg.start and prepare_s:
        seconds[recipe.stages[seg.start].stage_name] = seconds.get(recipe.stages[seg.start].stage_name, 0) + prepare_s
    lost_after = engine.lost_workers()
    lost = None if lost_before is None or lost_after is None else len(lost_after - lost_before)
    if lost:
        logger.warning("segment %s: %d Ray worker(s) died; Ray re-ran their tasks", seg.name, lost)
    live = [f for f in sink.files if not f.partition.startswith(REMOVED)]
    rec = SegmentRecord(
        final=last,
        segment=seg.index,
        name=seg.name,
        dir=ckdir,
        stages=[s.stage_name for s in recipe.stages[seg.start : seg.end]],
        read=snap["read"] if prev is None else None,
        rows_in=rows_in if prev is not None else sum(snap["read"].values()),
        live_rows=sum(f.rows for f in live),
        seconds=seconds,
        wall_seconds=round(time.perf_counter() - t0, 3),
        nodes=len(snap["nodes"]),
        workers_lost=lost,
        reports=reports,
        added=snap["added"],
        metrics=snap["metrics"],
        files=[f.__dict__ for f in sink.files],
        copied=copied,
        metadata=meta.report() if meta is not None else None,
    )
    logger.info("      done in %.1fs: %s rows live", rec.wall_seconds, f"{rec.live_rows:,}")
    return rec
