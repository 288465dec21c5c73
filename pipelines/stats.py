"""Run statistics gathered from the workers: rows read per file, busy seconds per stage, nodes that worked.

Under Ray the statistics live in a small actor (:func:`start`; runs of one session take turns with
it); an in-process run (:mod:`pipelines.local`) keeps a plain :class:`RunStats`. Readers and stage
chains report through :func:`report`, which serves both.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Any

logger = logging.getLogger(__name__)

#: the node an in-process run reports (it has no Ray node id)
LOCAL_NODE = "local"


def node_id() -> str:
    """The Ray node this worker runs on (reported with every call, so a run records the nodes it used)."""
    from pipelines.cluster import ray_up

    if not ray_up():
        return LOCAL_NODE
    import ray

    return ray.get_runtime_context().get_node_id()


#: ((Ray job id, node id), actor) of a statistics actor a finished run left for the next run of this driver
_IDLE: list[tuple[tuple[str, str], Any]] = []


def start(in_process: bool) -> Any:
    """The run's statistics: a plain object in process, else an actor. An actor costs a worker process
    (~1 CPU-second to start), so a finished run leaves its actor to the next run of the same Ray session
    in this process (runs in one process follow one another; one left at most, reset before use)."""
    if in_process:
        return RunStats()
    import ray

    session = _session()
    while _IDLE:
        owner, actor = _IDLE.pop()
        if owner != session:
            continue  # an earlier Ray session's: gone with it
        try:
            ray.get(actor.reset.remote(), timeout=30)
            return actor
        except Exception as e:  # killed meanwhile: end it for sure, start another
            logger.debug("statistics actor not reusable: %s", e)
            with contextlib.suppress(Exception):
                ray.kill(actor)
    return ray.remote(num_cpus=0)(RunStats).remote()


def _session() -> tuple[str, str]:
    """This driver's Ray job and node: a new local Ray after ``ray.shutdown()`` has another node."""
    import ray

    ctx = ray.get_runtime_context()
    return ctx.get_job_id(), ctx.get_node_id()


def report(stats: Any, method: str, *args: Any) -> Any:
    """Call ``method`` of the run's statistics, an actor or a plain :class:`RunStats`; its result."""
    if isinstance(stats, RunStats):
        return getattr(stats, method)(*args)
    import ray

    return ray.get(getattr(stats, method).remote(*args))


def stop(stats: Any, reuse: bool = True) -> None:
    """A run is over: leave its statistics actor for the next run, or end it (one is left already, or the run
    failed: a task of it may still be running and would report into the next run's statistics)."""
    if stats is None or isinstance(stats, RunStats):
        return
    import ray

    if _IDLE or not reuse:
        ray.kill(stats)
    else:
        _IDLE.append((_session(), stats))


class RunStats:
    """What the readers and stage chains report (one call per file or batch)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything reported: a new segment starts."""
        self.read: dict[str, int] = {}
        self.seconds: dict[str, float] = defaultdict(float)
        self.rows: dict[str, int] = defaultdict(int)
        self.nodes: set[str] = set()
        self.added: dict[tuple[str, str], int] = {}  # (stage, batch key) -> rows appended
        self.metrics: dict[str, dict] = {}

    def add_read(self, source: str, rows: int, node: str | None = None) -> None:
        # set, not add: one task reads a whole file, and a task Ray re-runs after losing its
        # worker reports the same file again with the same count
        self.read[source] = rows
        if node:
            self.nodes.add(node)

    def add_stage(self, times: dict[str, float], rows: int, node: str | None = None) -> None:
        for stage, secs in times.items():
            self.seconds[stage] += secs
            self.rows[stage] += rows
        if node:
            self.nodes.add(node)

    def add_generated(self, added: dict[str, int], metrics: dict[str, dict], batch: str = "") -> None:
        """Rows appended per stage (synthetic rows) by the batch keyed ``batch`` and per-stage counters such
        as tokens generated. Row counts are set per (stage, batch), not added: a batch Ray re-runs after
        losing its worker reports the same rows again (counters of work done do add up)."""
        for stage, k in added.items():
            self.added[(stage, batch)] = k
        for stage, m in metrics.items():
            self.metrics[stage] = sum_nested(self.metrics.get(stage, {}), m)

    def snapshot(self) -> dict:
        return {
            "read": dict(self.read),
            "seconds": dict(self.seconds),
            "rows": dict(self.rows),
            "nodes": sorted(self.nodes),
            "added": _per_stage(self.added),
            "metrics": self.metrics,
        }


def _per_stage(added: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for (stage, _), k in added.items():
        out[stage] += k
    return dict(out)


def sum_nested(a: dict, b: dict) -> dict:
    """Add two dicts of numbers (or of such dicts) key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = sum_nested(out.get(k, {}), v) if isinstance(v, dict) else round(out.get(k, 0) + v, 6)
    return out
