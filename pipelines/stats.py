"""Run statistics gathered from Ray workers: rows read per file, busy seconds per stage, nodes that worked."""

from __future__ import annotations

from collections import defaultdict

import ray


def node_id() -> str:
    """The Ray node this worker runs on (reported with every call, so a run records the nodes it used)."""
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
class RunStats:
    """A small actor the readers and stage chains report to (one call per file or batch)."""

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
