"""Shared fixtures: one Ray instance per session, tiny corpora written by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs shared by every test that runs a pipeline."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def make_batch(texts, domains=None, reasons=None):
    """A READ_SCHEMA batch of ``texts`` (ids d0, d1, …); a non-null reason marks a row removed earlier."""
    import pyarrow as pa

    from storage.schema import READ_SCHEMA

    n = len(texts)
    reasons = reasons or [None] * n
    cols = {
        "id": [f"d{i}" for i in range(n)],
        "text": texts,
        "domain": domains or ["web"] * n,
        "source": ["test"] * n,
        "reason": reasons,
        "stage": [None if r is None else "earlier" for r in reasons],
    }
    return pa.table({f.name: cols.get(f.name, [None] * n) for f in READ_SCHEMA}, schema=READ_SCHEMA)


def write_jsonl(path: Path, records: list[dict | bytes]) -> Path:
    """Write records (dicts as JSON, bytes as-is) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in records:
            f.write((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n")
    return path


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


GOOD_WORDS = (
    "the quick brown fox jumps over the lazy dog and then it runs to the river with a friend "
    "because they have to be home before the sun sets behind the hills of the old town."
)


def prose(i: int, sentences: int = 8) -> str:
    """A distinct English paragraph that passes the default heuristics."""
    return " ".join(f"Story {i} part {k}: {GOOD_WORDS}" for k in range(sentences))
