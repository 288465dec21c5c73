"""Tiny tokenized runs written with pyarrow, and servers started and stopped by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixers.server.engine import MixerConfig
from mixers.server.flight import start_server

EOS = 0
DOCS = {"a": 240, "b": 160, "c": 80}
SMALL_DOCS = {"a": 30, "b": 20, "c": 10}  # ids stay below 65,536: the corpus holds them as uint16


def doc_tokens(gid: int, n: int) -> list[int]:
    """Document ``gid``'s tokens: each encodes (gid, position), so any served token names its source; EOS last."""
    return [1 + gid * 1000 + p for p in range(n)] + [EOS]


def decode(tokens) -> list[tuple[int, int]]:
    """(doc, position) per token; EOS is (doc, -1) of the document it ends (the previous token's)."""
    out, last = [], -1
    for t in np.asarray(tokens).tolist():
        if t == EOS:
            out.append((last, -1))
        else:
            last = (t - 1) // 1000
            out.append((last, (t - 1) % 1000))
    return out


def make_run(
    root: Path, docs: dict[str, int] = DOCS, parts: int = 2, row_group: int = 16, seed: int = 0, statistics: bool = True
) -> dict:
    """Write ``shards/domain=<d>/part-NNNNN.parquet`` (small row groups force many units); return the truth."""
    rng = np.random.default_rng(seed)
    gid = 0
    truth = {"train": {}, "holdout": {}}
    for d, n in docs.items():
        os.makedirs(root / "shards" / f"domain={d}", exist_ok=True)
        per = -(-n // parts)
        for part in range(parts):
            toks, ids, split = [], [], []
            for _ in range(min(per, n - part * per)):
                t = doc_tokens(gid, int(rng.integers(3, 90)))
                s = "holdout" if gid % 10 == 3 else "train"
                truth[s].setdefault(d, {})[gid] = t
                toks.append(t)
                ids.append(f"{d}-{gid}")
                split.append(s)
                gid += 1
            table = pa.table(
                {
                    "id": ids,
                    "text": ["…"] * len(ids),
                    "source": ["test"] * len(ids),
                    "tokens": pa.array(toks, pa.list_(pa.int32())),
                    "n_tokens": pa.array([len(t) for t in toks], pa.int64()),
                    "split": split,
                }
            )
            pq.write_table(
                table,
                root / "shards" / f"domain={d}" / f"part-{part:05d}.parquet",
                row_group_size=row_group,
                write_statistics=statistics,
            )
    return truth


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixrun")
    truth = make_run(root)
    return root, truth


@pytest.fixture(scope="session")
def small_run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixrun-small")
    truth = make_run(root, SMALL_DOCS, row_group=4)
    return root, truth


@pytest.fixture(params=["int32", "uint16"])
def any_run_dir(request, run_dir, small_run_dir):
    """Both token types the corpus holds ids in: int32 (ids up to 480,090) and uint16."""
    return run_dir if request.param == "int32" else small_run_dir


@pytest.fixture
def serve(run_dir):
    """Start servers on free loopback ports; every one is closed at the end of the test."""
    started = []

    def _start(config: MixerConfig | None = None, **kw):
        kw.setdefault("log_every", 0)
        srv = start_server(str(run_dir[0]), config or MixerConfig(seq_len=32, global_batch=8, prefetch=4), **kw)
        started.append(srv)
        return srv

    yield _start
    for s in started:
        s.close()


def read_steps(
    location: str, rank: int, world: int, start: int, n: int, headers=None
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Read ``n`` steps for one rank with a bare Flight client: (step, tokens [B, L], domain ids)."""
    import json

    import pyarrow.flight as flight

    client = flight.connect(location)
    try:
        ticket = {"kind": "train", "rank": rank, "world": world, "step": start, "steps": n}
        reader = client.do_get(
            flight.Ticket(json.dumps(ticket).encode()), flight.FlightCallOptions(headers=headers or [])
        )
        out = []
        for _ in range(n):
            chunk = reader.read_chunk()
            step = json.loads(chunk.app_metadata.to_pybytes())["step"]
            col = chunk.data.column("input_ids")
            toks = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
            out.append((step, toks, chunk.data.column("domain").to_numpy()))
        return out
    finally:
        client.close()
