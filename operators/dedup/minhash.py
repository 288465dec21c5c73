"""Fuzzy deduplication: MinHash LSH on Ray Data, verified pairs, connected components, one survivor per cluster."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
import time
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import (
    NOT_BOOL,
    AtLeastOne,
    GlobalStage,
    Prepared,
    Probability,
    Share,
    StageContext,
    in_process,
    mark_removed,
    register,
    share,
)
from operators.dedup.components import cluster_table, connected_components, distinct_edges, edge_nodes, size_histogram
from operators.dedup.lsh_plan import MinHashConfig, optimal_bands_rows
from operators.dedup.ray_steps import StepConfig, candidate_pairs, name_candidates, verify_pairs
from operators.dedup.signatures import doc_uids
from storage.schema import with_column

logger = logging.getLogger(__name__)

REASON = "minhash_duplicate"
_SURVIVOR = re.compile(r"^(lowest_id|highest:[A-Za-z_][A-Za-z0-9_]*)$")


@functools.lru_cache(maxsize=32)
def _plan(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    return optimal_bands_rows(threshold, num_perm, fp_weight, fn_weight)


@register("minhash_dedup")
class MinHashDedup(GlobalStage):
    """Remove near-duplicate documents (MinHash LSH), keeping one survivor per cluster.

    Shingles are word ``ngram``-grams (or ``char_ngram`` character grams) of normalised
    text, exactly as defined in :mod:`operators.dedup.signatures` (NFC, lowercase, words = runs
    of Unicode letters/marks/digits, punctuation ignored). ``prepare`` runs three phases:

    1. *Signatures and buckets* (Ray Data): each live document's MinHash signature
       (numba kernels, datasketch's permutations) becomes one row per band ``(key, uid)``; a
       shuffle groups rows by key shard and every bucket with ≥ 2 documents emits its
       candidate pairs — all pairs up to 16 members, else a star to the bucket's smallest
       key plus a chain through the sorted keys (O(n) edges, never O(n²)). Pairs are
       streamed to a Parquet spill on the driver and made distinct with polars.
    2. *Verification* (Ray Data, ``verify``): in one keyed shuffle, each candidate
       document's shingle set (recomputed, sorted uint32 hashes) travels to the shards that
       verify its pairs — a pair is verified at the shard of its smaller key, and the driver
       broadcasts a small (document → shards) table — and only pairs with exact Jaccard ≥
       ``threshold`` become edges, spilled to Parquet. Without ``verify`` every candidate
       is an edge (and one plain pass names the candidate documents).
    3. *Components* (driver, memory-bounded): union–find over dense indexes of the nodes,
       streaming the spilled edges in chunks; the survivor of each component is the member
       with the lowest ``id`` or the highest score column (``highest:<col>``, ties to the
       lowest id). The (uid → cluster, size, survivor) table goes to ``ray.put``.

    ``apply`` then marks every non-survivor ``minhash_duplicate`` with ``dup_of`` = the
    survivor's id, and sets ``dup_cluster`` (0.. numbered by survivor id; -1 for documents
    without a near duplicate) and ``dup_cluster_size`` (1 when unique) on every live row.
    Documents are keyed by ``xxh3_64(id)``; ids must be unique. Spills live in the
    driver's temporary directory; workers only ever exchange data through Ray, so the same
    code runs on a multi-node cluster (``RAY_ADDRESS``).

    Memory (the design target is 10M documents on one 24 GB machine): Ray Data streams the
    signature pass and spills shuffles to disk; the driver holds ~16 bytes per clustered
    document for components plus the candidate-document broadcast (~12 bytes per
    (document, shard)), and ``apply`` workers share one (uid, id, cluster, size, survivor)
    table of the clustered documents through the object store.

    The band/row plan minimises ``fp_weight·FP + fn_weight·FN`` with
    P(s) = 1 − (1 − s^r)^b, the same search as datasketch's ``MinHashLSH`` (checked in the
    tests). With ``verify`` on, false positives only cost a Jaccard computation, so the
    default leans to recall (fn_weight 0.9: 14×9 at 0.8, P(0.8) = 0.87, P(0.85) = 0.975);
    without it the weights are datasketch's 0.5/0.5 (9×13, P(0.8) = 0.40). 128 permutations:
    datasketch's default and close to datatrove's 112; with verification a steeper S-curve
    from 256 would mostly save Jaccard work while doubling signature cost.

    Args:
        threshold: Jaccard similarity at or above which two documents are duplicates.
        ngram: words per shingle.
        char_ngram: use character n-grams of this length instead of words.
        num_perm: MinHash permutations (datasketch's ``num_perm``).
        bands: LSH bands; with ``rows``, overrides the planner.
        rows: signature values per band; with ``bands``, overrides the planner.
        fn_weight: planner weight of false negatives (false positives get 1 − fn_weight);
            default 0.9 with ``verify``, 0.5 without.
        verify: keep only candidate pairs whose exact shingle Jaccard ≥ ``threshold``.
        survivor: ``lowest_id`` or ``highest:<column>`` (a numeric column; nulls lose).
        seed: permutation seed, as datasketch's ``MinHash(seed=…)``.
        hash: shingle hash: ``xxh3`` (xxh3 word hashes, combined in a numba kernel) or ``sha1`` (datasketch's values,
            for cross-checks; slower, see BENCHMARKS.md).
        scheme: datasketch permutation scheme: ``affine32`` (datasketch 2.x default) or ``legacy``.
        shuffle: Ray Data shuffle for the two keyed shuffles: ``sort`` (the classic
            pull-based sort shuffle) or ``ray_default`` (the DataContext's strategy). On Ray
            2.60 the default SHUFFLE_V2 starts dedicated worker processes for every shuffle, a
            fixed cost however small the data (BENCHMARKS.md), so ``sort`` is the default.
    """

    adds = ("dup_cluster", "dup_cluster_size")

    def __init__(
        self,
        *,
        threshold: Share = 0.8,
        ngram: AtLeastOne = 5,
        char_ngram: AtLeastOne | None = None,
        num_perm: Annotated[int, NOT_BOOL, Field(ge=2, le=1024)] = 128,
        bands: AtLeastOne | None = None,
        rows: AtLeastOne | None = None,
        fn_weight: Probability | None = None,
        verify: bool = True,
        survivor: Annotated[str, Field(pattern=_SURVIVOR.pattern)] = "lowest_id",
        seed: int = 1,
        hash: Literal["xxh3", "sha1"] = "xxh3",
        scheme: Literal["affine32", "legacy"] = "affine32",
        shuffle: Literal["sort", "ray_default"] = "sort",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (bands is None) != (rows is None):  # a relation between two parameters; ranges are on the annotations
            raise ValueError(f"give both bands and rows or neither, got bands={bands}, rows={rows}")
        self.shuffle = shuffle
        self.threshold = float(threshold)
        self.verify = bool(verify)
        self.fn_weight = float(fn_weight) if fn_weight is not None else (0.9 if verify else 0.5)
        self.survivor = survivor
        self.score_column = survivor.split(":", 1)[1] if survivor.startswith("highest:") else None
        self._shape = dict(ngram=ngram, char_ngram=char_ngram, num_perm=num_perm, seed=seed, hash=hash, scheme=scheme)
        self._bands_rows = (bands, rows)
        if bands is not None:
            self.config  # noqa: B018 - validates bands*rows <= num_perm now

    @functools.cached_property
    def config(self) -> MinHashConfig:
        """The shingle/hash/LSH settings; (bands, rows) from the planner unless given."""
        bands, rows = self._bands_rows
        if bands is None:
            bands, rows = _plan(self.threshold, self._shape["num_perm"], 1.0 - self.fn_weight, self.fn_weight)
        return MinHashConfig(bands=bands, rows=rows, **self._shape)

    @property
    def steps(self) -> StepConfig:
        """The settings the Ray steps run with (a config object, not this operator)."""
        domains = None if self.domains is None else tuple(self.domains)
        return StepConfig(self.config, self.threshold, domains, self.score_column)

    # ------------------------------------------------------------------ prepare
    @classmethod
    def prepare(cls, ds, params: dict[str, Any], ctx: StageContext) -> Prepared:
        import polars as pl

        op = cls(stage="prepare", **params)
        cfg = op.config
        if op.score_column is not None and op.score_column not in ds.schema().names:
            raise ValueError(f"survivor column {op.score_column!r} is not a column of the stage's input")
        seconds: dict[str, float] = {}
        num_partitions = ctx.num_partitions
        spill = tempfile.TemporaryDirectory(prefix="sluice-minhash-", dir=ctx.tmp_dir)
        with spill as tmp, _shuffle_strategy(ds, op.shuffle):
            # 1. signatures -> band rows -> buckets -> candidate pairs (spilled, then distinct)
            t0 = time.perf_counter()
            raw, stats = candidate_pairs(ds, op.steps, num_partitions, os.path.join(tmp, "candidates-raw.parquet"))
            seconds["signatures_and_buckets"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cand_path = os.path.join(tmp, "candidates.parquet")
            n_cand = distinct_edges(raw.path, cand_path) if raw.rows else 0
            seconds["distinct_pairs"] = time.perf_counter() - t0

            # 2. verification (or just names for the candidate documents)
            t0 = time.perf_counter()
            hist: dict[str, int] = {}
            if n_cand == 0:
                edges_path, info = (
                    cand_path,
                    pl.DataFrame(schema={"uid": pl.Int64, "id": pl.String, "score": pl.Float64}),
                )
                n_edges = 0
            elif op.verify:
                edges_path, info, n_edges, hist = verify_pairs(op.steps, ds, cand_path, tmp, num_partitions)
            else:
                names = name_candidates(ds, op.steps, edge_nodes(cand_path), os.path.join(tmp, "docs.parquet"))
                info = pl.scan_parquet(names)
                edges_path, n_edges = cand_path, n_cand
            seconds["verify" if op.verify else "candidate_names"] = time.perf_counter() - t0

            # 3. connected components and survivors (driver, over the spilled edges)
            t0 = time.perf_counter()
            nodes, root = connected_components(edges_path) if n_edges else (np.zeros(0, np.int64),) * 2
            seconds["components"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            table = cluster_table(nodes, root, info)
            seconds["survivors"] = time.perf_counter() - t0
        sizes = np.bincount(root)[np.bincount(root) > 0] if len(root) else np.zeros(0, np.int64)
        report = {
            "plan": cfg.report(op.threshold, 1.0 - op.fn_weight, op.fn_weight),
            "verify": op.verify,
            "shuffle": op.shuffle,
            "survivor": op.survivor,
            "documents_with_shingles": stats["band_rows"] // cfg.bands,
            **stats,
            "candidate_pairs": int(n_cand),
            "verified_pairs": int(n_edges),
            "candidate_jaccard_histogram": hist,
            "clusters": len(sizes),
            "documents_in_clusters": int(sizes.sum()),
            "duplicates_removed": int(sizes.sum() - len(sizes)),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0,
            "cluster_size_histogram": size_histogram(sizes),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        logger.info(
            "minhash_dedup %s: %d candidate pairs, %d edges, %d clusters, %d duplicates",
            cfg,
            n_cand,
            n_edges,
            report["clusters"],
            report["duplicates_removed"],
        )
        return Prepared({"clusters": share(ds, table)}, report)

    # ------------------------------------------------------------------ apply
    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        table, uids = self.shared("clusters", _with_uids)
        idx = np.flatnonzero(active)
        cluster, size = _column(batch, "dup_cluster"), _column(batch, "dup_cluster_size")
        cluster[0][idx], cluster[1][idx] = -1, True
        size[0][idx], size[1][idx] = 1, True
        losers = np.zeros(0, dtype=np.int64)
        survivors: list[str] = []
        if table.num_rows and idx.size:
            ids = batch.column("id").take(pa.array(idx))
            key = doc_uids(ids)
            pos = np.minimum(np.searchsorted(uids, key), len(uids) - 1)
            hit = uids[pos] == key
            if hit.any():
                rows = pa.array(pos[hit])
                same = pc.equal(table.column("id").take(rows), ids.filter(pa.array(hit)))
                hit[np.flatnonzero(hit)] = same.to_numpy(zero_copy_only=False)  # guard against id-hash clashes
            if hit.any():
                rows = pa.array(pos[hit])
                at = idx[hit]
                cluster[0][at] = table.column("cluster").take(rows).to_numpy()
                size[0][at] = table.column("size").take(rows).to_numpy()
                surv = table.column("survivor").take(rows)
                lose = pc.not_equal(ids.filter(pa.array(hit)), surv).to_numpy(zero_copy_only=False)
                losers = at[lose]
                survivors = surv.filter(pa.array(lose)).to_pylist()
        batch = with_column(batch, "dup_cluster", pa.array(cluster[0], pa.int64(), mask=~cluster[1]))
        batch = with_column(batch, "dup_cluster_size", pa.array(size[0], pa.int64(), mask=~size[1]))
        if losers.size == 0:
            return batch
        return mark_removed(batch, losers, [REASON] * losers.size, self.stage, survivors)


def _with_uids(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The cluster table and its sorted ``uid`` column as numpy (looked up per batch)."""
    return table, table.column("uid").to_numpy() if table.num_rows else np.zeros(0, np.int64)


@contextlib.contextmanager
def _shuffle_strategy(ds, name: str):
    """Use the sort shuffle for the datasets prepare() derives from ``ds`` or creates (then restore)."""
    if name != "sort" or in_process(ds):  # an in-process run has no shuffles
        yield
        return
    from ray.data.context import DataContext, ShuffleStrategy

    contexts = [DataContext.get_current(), ds.context]
    old = [c.shuffle_strategy for c in contexts]
    for c in contexts:
        c.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        for c, o in zip(contexts, old):
            c.shuffle_strategy = o


def _column(batch: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of an int64 column, so rows this stage does not touch keep what they had."""
    if name not in batch.column_names:
        return np.zeros(batch.num_rows, np.int64), np.zeros(batch.num_rows, bool)
    col = batch.column(name)
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False).copy()
    return pc.fill_null(col, 0).to_numpy().astype(np.int64).copy(), valid
