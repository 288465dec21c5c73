"""The Ray Data steps of ``minhash_dedup``: band rows, LSH buckets, the verification shuffle."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import active_rows, fetch, from_tables, share
from operators.dedup.components import EDGE_SCHEMA, ParquetSpill, iter_parquet
from operators.dedup.lsh_plan import MinHashConfig
from operators.dedup.signatures import (
    Permutations,
    band_keys,
    doc_uids,
    jaccard_binary,
    sets_to_binary,
    shingle_hashes,
    signatures,
    unique_sets,
)

logger = logging.getLogger(__name__)

#: rows per block for the passes over documents: a checkpoint file is one read task, so without this
#: a 128 MB checkpoint would be tokenised by a single task (streaming repartition, no shuffle)
BLOCK_ROWS = 4096
#: rows per block going into a shuffle: the sort shuffle makes (blocks x blocks) pieces, so the many
#: small blocks of the document passes are coalesced first (~20 MB of band rows per block)
SHUFFLE_BLOCK_ROWS = 1 << 20
#: buckets up to this size emit all their pairs; larger ones a star to the smallest key plus a chain
ALL_PAIRS_MAX_BUCKET = 16
_JACCARD_BINS = np.round(np.arange(0, 1.01, 0.1), 1)
DOCS_SCHEMA = pa.schema([("uid", pa.int64()), ("id", pa.string()), ("score", pa.float64())])
_VERIFY_ROWS = pa.schema(
    [
        ("shard", pa.int32()),
        ("kind", pa.int8()),  # 0: a document's shingle set, 1: a pair (uid, other) to verify
        ("uid", pa.int64()),
        ("other", pa.int64()),
        ("id", pa.string()),
        ("score", pa.float64()),
        ("sh", pa.large_binary()),
    ]
)
_BUCKET_OUT = pa.schema(
    [("a", pa.int64()), ("b", pa.int64()), ("band_rows", pa.int64()), ("buckets", pa.int64()), ("largest", pa.int64())]
)
_VERIFIED = pa.schema(
    [
        ("a", pa.int64()),
        ("b", pa.int64()),
        ("j", pa.float64()),
        ("id_a", pa.string()),
        ("id_b", pa.string()),
        ("score_a", pa.float64()),
        ("score_b", pa.float64()),
    ]
)


@dataclass(frozen=True)
class StepConfig:
    """What the Ray steps need from a ``minhash_dedup`` stage, and nothing else.

    Args:
        minhash: shingles, hashes, permutations and the (bands, rows) plan.
        threshold: exact Jaccard a candidate pair must reach to be an edge (verification).
        domains: the domains that take part (None: all).
        score_column: the survivor's score column (``highest:<column>``), or None for the lowest id.
    """

    minhash: MinHashConfig
    threshold: float
    domains: tuple[str, ...] | None = None
    score_column: str | None = None


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int, scheme: str, used: int) -> Permutations:
    """datasketch's permutations, drawn once per worker process."""
    return Permutations(num_perm, seed, scheme, used)


def candidate_pairs(ds, run: StepConfig, num_partitions: int, path: str) -> tuple[ParquetSpill, dict[str, int]]:
    """Phase 1: signatures → band rows → a shuffle by key shard → bucket pairs, spilled to ``path``.

    Rows are grouped by ``key mod shards`` rather than by key, so each ``map_groups`` call
    handles a whole shard of buckets with numpy instead of one Python call per bucket.
    Each group also sends one statistics row (null pair), summed here into the returned dict.
    """
    shards = 4 * max(2, num_partitions)
    out = (
        _split(ds)
        .map_batches(band_rows, batch_format="pyarrow", fn_kwargs={"run": run, "shards": shards})
        .repartition(target_num_rows_per_block=SHUFFLE_BLOCK_ROWS, strict=True)
        .groupby("shard", num_partitions=max(2, num_partitions))
        .map_groups(bucket_pairs_block, batch_format="pyarrow")
    )
    pairs = ParquetSpill(path, EDGE_SCHEMA)
    stats = {"band_rows": 0, "multi_document_buckets": 0, "largest_bucket": 0}
    for t in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        is_pair = pc.is_valid(t.column("a"))
        pairs.write(t.filter(is_pair))
        st = t.filter(pc.invert(is_pair))
        if st.num_rows:
            stats["band_rows"] += int(pc.sum(st.column("band_rows")).as_py())
            stats["multi_document_buckets"] += int(pc.sum(st.column("buckets")).as_py())
            stats["largest_bucket"] = max(stats["largest_bucket"], int(pc.max(st.column("largest")).as_py()))
    pairs.close()
    return pairs, stats


def _split(ds):
    """Blocks of at most BLOCK_ROWS documents, so the document passes use every CPU."""
    return ds.repartition(target_num_rows_per_block=BLOCK_ROWS)


def name_candidates(ds, run: StepConfig, candidates: np.ndarray, path: str) -> str:
    """Key, id and score of every candidate document (``verify: false``), spilled to ``path``."""
    names = _split(ds).map_batches(
        candidate_names, batch_format="pyarrow", fn_kwargs={"run": run, "candidates": share(ds, candidates)}
    )
    return spill(names, path, DOCS_SCHEMA).path


def active_docs(run: StepConfig, batch: pa.Table) -> tuple[pa.Array, pa.Array, pa.Array | None]:
    """Ids, texts and survivor scores (or None) of the rows the stage works on."""
    idx = pa.array(np.flatnonzero(active_rows(batch, run.domains)))
    score = None
    if run.score_column is not None:
        if run.score_column not in batch.column_names:
            raise KeyError(f"survivor column {run.score_column!r} missing from a batch")
        score = batch.column(run.score_column).take(idx).cast(pa.float64())
    return batch.column("id").take(idx), batch.column("text").take(idx), score


def band_rows(batch: pa.Table, *, run: StepConfig, shards: int) -> pa.Table:
    """One row per (document, band): the band's bucket key, the document key and a shard of the key."""
    cfg = run.minhash
    ids, texts, _ = active_docs(run, batch)
    h, off = shingle_hashes(texts, cfg.ngram, cfg.char_ngram, cfg.hash)
    live = np.diff(off) > 0
    sig = signatures(h, off, permutations(cfg.num_perm, cfg.seed, cfg.scheme, cfg.used_perm))[live]
    keys = band_keys(sig, cfg.bands, cfg.rows).ravel()
    uid = np.repeat(doc_uids(ids)[live], cfg.bands)
    shard = _shard_of(keys, shards)
    return pa.table({"shard": shard, "key": keys, "uid": uid})


def bucket_pairs(key: np.ndarray, uid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) from rows (bucket key, document key), without per-bucket Python.

    A bucket of up to ``ALL_PAIRS_MAX_BUCKET`` documents yields all its pairs (what an LSH
    index query returns); a larger one yields a star to its smallest key plus a chain
    through its sorted keys, 2n − 3 pairs that connect the same documents. Returns
    (a, b, sizes of the buckets with ≥ 2 documents). Pairs repeat when they share several
    buckets; the caller makes them distinct.
    """
    order = np.lexsort((uid, key))
    key, uid = key[order], uid[order]
    n = len(key)
    start = np.ones(n, dtype=bool)
    start[1:] = key[1:] != key[:-1]
    run = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    length = np.diff(np.append(first, n))
    multi = length[run] >= 2
    empty = np.zeros(0, dtype=np.int64)
    if not multi.any():
        return empty, empty, empty
    rows = np.flatnonzero(multi)  # whole runs survive, so runs stay contiguous
    pos = rows - first[run[rows]]
    size = length[run[rows]]
    uid = uid[rows]
    head = np.arange(len(rows)) - pos  # each row's run start, in the filtered arrays
    a_parts, b_parts = [empty], [empty]
    small = size <= ALL_PAIRS_MAX_BUCKET
    for d in range(1, ALL_PAIRS_MAX_BUCKET):
        i = np.flatnonzero(small & (pos + d < size))
        if i.size == 0:
            break
        a_parts.append(uid[i])
        b_parts.append(uid[i + d])
    big = ~small
    if big.any():
        i = np.flatnonzero(big & (pos + 1 < size))  # chain through the sorted keys
        a_parts.append(uid[i])
        b_parts.append(uid[i + 1])
        i = np.flatnonzero(big & (pos >= 2))  # star to the smallest key
        a_parts.append(uid[head[i]])
        b_parts.append(uid[i])
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    keep = a != b  # a repeated id in one bucket is not a pair
    return a[keep], b[keep], length[length >= 2]


def bucket_pairs_block(group: pa.Table) -> pa.Table:
    """``bucket_pairs`` over one key shard of band rows, plus one statistics row."""
    a, b, sizes = bucket_pairs(group.column("key").to_numpy(), group.column("uid").to_numpy())
    n = len(a)
    last = np.arange(n + 1) == n  # the statistics row
    stats = {"band_rows": group.num_rows, "buckets": len(sizes), "largest": int(sizes.max()) if len(sizes) else 0}
    cols = {"a": pa.array(np.append(a, 0), mask=last), "b": pa.array(np.append(b, 0), mask=last)}
    cols.update({k: pa.array(np.full(n + 1, v, np.int64), mask=~last) for k, v in stats.items()})
    return pa.table(cols, schema=_BUCKET_OUT)


_BROADCAST: dict[str, Any] = {}


def _broadcast(ref) -> Any:
    """What :func:`share` handed over (a Ray object reference or a ``LocalRef``), fetched once per process
    for the current prepare()."""
    key = ref.hex()
    if key not in _BROADCAST:
        _BROADCAST.clear()
        _BROADCAST[key] = fetch(ref)
    return _BROADCAST[key]


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of each key's run in ``sorted_keys`` (empty where absent)."""
    return np.searchsorted(sorted_keys, keys, side="left"), np.searchsorted(sorted_keys, keys, side="right")


def candidate_names(batch: pa.Table, *, run: StepConfig, candidates) -> pa.Table:
    """Key, id and score of the live documents that are in some candidate pair (``verify: false``)."""
    ids, _, score = active_docs(run, batch)
    uid = doc_uids(ids)
    lo, hi = _lookup(_broadcast(candidates), uid)
    keep = pa.array(np.flatnonzero(hi > lo))
    score = score.take(keep) if score is not None else pa.nulls(len(keep), pa.float64())
    return pa.table({"uid": uid[keep.to_numpy()], "id": ids.take(keep), "score": score}, schema=DOCS_SCHEMA)


def _shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    return (keys.view(np.uint64) % np.uint64(shards)).astype(np.int32)


def _candidate_sets(batch: pa.Table, *, run: StepConfig, dests) -> pa.Table:
    """A row per (candidate document, shard that verifies one of its pairs), with its shingle set."""
    dest_uid, dest_shard = _broadcast(dests)
    ids, texts, score = active_docs(run, batch)
    uid = doc_uids(ids)
    lo, hi = _lookup(dest_uid, uid)
    docs = np.flatnonzero(hi > lo)
    reps = (hi - lo)[docs]
    row = np.repeat(docs, reps)  # document of each output row
    at = np.repeat(lo[docs], reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
    cfg = run.minhash
    vals, off = unique_sets(*shingle_hashes(texts.take(pa.array(docs)), cfg.ngram, cfg.char_ngram, cfg.hash))
    sets = sets_to_binary(vals, off).take(pa.array(np.repeat(np.arange(len(docs)), reps)))
    take = pa.array(row)
    return pa.table(
        {
            "shard": dest_shard[at],
            "kind": np.zeros(len(row), np.int8),
            "uid": uid[row],
            "other": np.zeros(len(row), np.int64),
            "id": ids.take(take),
            "score": score.take(take) if score is not None else pa.nulls(len(row), pa.float64()),
            "sh": sets,
        },
        schema=_VERIFY_ROWS,
    )


def _pair_rows(batch: pa.Table, *, shards: int) -> pa.Table:
    """Candidate pairs as rows of the verification shuffle, at the shard of their smaller key."""
    a = batch.column("a").to_numpy()
    n = len(a)
    return pa.table(
        {
            "shard": _shard_of(a, shards),
            "kind": np.ones(n, np.int8),
            "uid": a,
            "other": batch.column("b").to_numpy(),
            "id": pa.nulls(n, pa.string()),
            "score": pa.nulls(n, pa.float64()),
            "sh": pa.nulls(n, pa.large_binary()),
        },
        schema=_VERIFY_ROWS,
    )


def _jaccard_group(group: pa.Table) -> pa.Table:
    """Exact Jaccard of every pair in one shard, from the shingle sets shipped to the same shard."""
    kind = group.column("kind").to_numpy()
    docs = group.filter(pa.array(kind == 0))
    pairs = group.filter(pa.array(kind == 1))
    if pairs.num_rows == 0:
        return _VERIFIED.empty_table()
    uid = docs.column("uid").to_numpy()
    order = np.argsort(uid, kind="stable")
    docs, uid = docs.take(pa.array(order)), uid[order]
    a, b = pairs.column("uid").to_numpy(), pairs.column("other").to_numpy()
    ia = np.minimum(np.searchsorted(uid, a), max(len(uid) - 1, 0))
    ib = np.minimum(np.searchsorted(uid, b), max(len(uid) - 1, 0))
    found = (uid[ia] == a) & (uid[ib] == b) if len(uid) else np.zeros(len(a), bool)
    if not found.all():  # cannot happen unless ids changed between passes; never guess a pair
        logger.warning("minhash_dedup: %d candidate pairs lost a document", int((~found).sum()))
        a, b, ia, ib = a[found], b[found], ia[found], ib[found]
    ta, tb = pa.array(ia), pa.array(ib)
    j = jaccard_binary(docs.column("sh").take(ta), docs.column("sh").take(tb))
    cols = {"a": a, "b": b, "j": j, "id_a": docs.column("id").take(ta), "id_b": docs.column("id").take(tb)}
    cols.update(score_a=docs.column("score").take(ta), score_b=docs.column("score").take(tb))
    return pa.table(cols, schema=_VERIFIED)


def verify_pairs(run: StepConfig, ds, cand_path: str, tmp: str, num_partitions: int):
    """Exact Jaccard for every candidate pair; keep pairs ≥ threshold. One keyed shuffle.

    Each pair is verified at the shard of its smaller key ``a``. The driver broadcasts,
    per candidate document, the shards it must reach (its own pairs' ``a`` shards: a small
    table, 12 bytes per (document, shard)); the document pass ships each shingle set
    there, the pairs follow as rows of the same shuffle, and each shard group computes its
    pairs' Jaccard. A star bucket's pairs share ``a``, so its center's set travels once.
    """
    import polars as pl

    shards = 4 * max(2, num_partitions)
    scan = pl.scan_parquet(cand_path)
    home = (pl.col("a").reinterpret(signed=False) % shards).cast(pl.Int32).alias("shard")
    dest = (
        pl.concat([scan.select(pl.col("a").alias("uid"), home), scan.select(pl.col("b").alias("uid"), home)])
        .unique()
        .sort(["uid", "shard"])
        .collect()
    )
    dests = share(ds, (dest["uid"].to_numpy(), dest["shard"].to_numpy()))
    docs = (
        _split(ds)
        .map_batches(_candidate_sets, batch_format="pyarrow", fn_kwargs={"run": run, "dests": dests})
        .repartition(target_num_rows_per_block=SHUFFLE_BLOCK_ROWS // 16, strict=True)  # rows carry shingle sets
    )
    parts = [pa.Table.from_batches([b]) for b in iter_parquet(cand_path, ["a", "b"], 1 << 20)]
    pairs = from_tables(ds, parts).map_batches(_pair_rows, batch_format="pyarrow", fn_kwargs={"shards": shards})
    scored = (
        docs.union(pairs)
        .groupby("shard", num_partitions=max(2, num_partitions))
        .map_groups(_jaccard_group, batch_format="pyarrow")
    )
    edges = ParquetSpill(os.path.join(tmp, "verified.parquet"), _VERIFIED)
    counts = np.zeros(len(_JACCARD_BINS) - 1, dtype=np.int64)
    for t in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        j = t.column("j").to_numpy()
        counts += np.histogram(j, bins=_JACCARD_BINS)[0]
        edges.write(t.filter(pa.array(j >= run.threshold)))
    edges.close()
    hist = {f"{lo:.1f}-{hi:.1f}": int(c) for lo, hi, c in zip(_JACCARD_BINS[:-1], _JACCARD_BINS[1:], counts) if c}
    scan = pl.scan_parquet(edges.path)
    info = pl.concat(
        [
            scan.select(pl.col("a").alias("uid"), pl.col("id_a").alias("id"), pl.col("score_a").alias("score")),
            scan.select(pl.col("b").alias("uid"), pl.col("id_b").alias("id"), pl.col("score_b").alias("score")),
        ]
    )
    return edges.path, info, edges.rows, hist


def spill(ds, path: str, schema: pa.Schema) -> ParquetSpill:
    """Stream a dataset's blocks into one Parquet file on the driver."""
    spill = ParquetSpill(path, schema)
    for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        spill.write(t)
    spill.close()
    return spill
