"""Run statistics gathered from Ray workers: rows read per file, busy seconds per stage."""

from __future__ import annotations

from collections import defaultdict

import ray


@ray.remote(num_cpus=0)
class RunStats:
    """A small actor the readers and stage chains report to (one call per file or batch)."""

    def __init__(self) -> None:
        self.read: dict[str, int] = {}
        self.seconds: dict[str, float] = defaultdict(float)
        self.rows: dict[str, int] = defaultdict(int)

    def add_read(self, source: str, rows: int) -> None:
        self.read[source] = self.read.get(source, 0) + rows

    def add_stage(self, times: dict[str, float], rows: int) -> None:
        for stage, secs in times.items():
            self.seconds[stage] += secs
            self.rows[stage] += rows

    def snapshot(self) -> dict:
        return {"read": dict(self.read), "seconds": dict(self.seconds), "rows": dict(self.rows)}
