"""Exact deduplication across the whole dataset, with the lowest id as the survivor."""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import GlobalStage, Prepared, StageContext, mark_removed, register, share
from operators.dedup.components import size_histogram
from operators.grouping import repeated


def normalized_key(text: str) -> str:
    """The exact-dedup key: 128-bit BLAKE2b of NFC, lowercased, whitespace-collapsed text."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    norm = " ".join(text.lower().split())  # str.split() collapses Unicode whitespace like \s+, faster than re
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def _keys(batch: pa.Table, active: np.ndarray) -> tuple[np.ndarray, list[str]]:
    idx = np.flatnonzero(active)
    texts = batch.column("text").take(pa.array(idx)).to_pylist()
    return idx, [normalized_key(t) for t in texts]


@register("exact_dedup")
class ExactDedup(GlobalStage):
    """Remove documents whose normalized text equals another's; the lowest ``id`` survives.

    Pass 1 (``prepare``) hashes every live document and groups the hashes (count, min id;
    :mod:`operators.grouping`), keeping only groups with more than one member (the
    report counts them by size, ``group_size_histogram``). Pass 2
    marks every member of such a group except the survivor as ``exact_duplicate`` with
    ``dup_of`` = the survivor's id. With ``domains``, only those domains take part.
    """

    @classmethod
    def prepare(cls, ds, params: dict[str, Any], ctx: StageContext) -> Prepared:
        probe = cls(stage="prepare", **params)

        def keyed(batch: pa.Table) -> pa.Table:
            idx, keys = _keys(batch, probe.active(batch))
            return pa.table({"_h": pa.array(keys, pa.string()), "id": batch.column("id").take(pa.array(idx))})

        table = repeated(ds.map_batches(keyed, batch_format="pyarrow"), "_h", "id", ctx).rename_columns(
            {"first": "survivor"}
        )
        sizes = table.column("n").to_numpy() if table.num_rows else np.zeros(0, dtype=np.int64)
        report = {
            "duplicate_groups": int(table.num_rows),
            "duplicates_removed": int((sizes - 1).sum()),
            "largest_group": int(sizes.max()) if sizes.size else 0,
            "group_size_histogram": size_histogram(sizes),
        }
        return Prepared({"dups": share(ds, table.select(["_h", "survivor"]))}, report)

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        dups = self.shared("dups")
        if dups.num_rows == 0:
            return batch
        idx, keys = _keys(batch, active)
        probe = pa.table({"_h": pa.array(keys, pa.string()), "_row": pa.array(idx, pa.int64())})
        hits = probe.join(dups, "_h", join_type="inner")
        if hits.num_rows == 0:
            return batch
        rows = hits.column("_row").to_numpy()
        ids = batch.column("id").take(pa.array(rows))
        losers = pc.not_equal(ids, hits.column("survivor")).to_numpy(zero_copy_only=False)
        rows = rows[losers]
        if rows.size == 0:
            return batch
        survivors = hits.column("survivor").filter(pa.array(losers)).to_pylist()
        order = np.argsort(rows)
        return mark_removed(
            batch, rows[order], ["exact_duplicate"] * rows.size, self.stage, [survivors[i] for i in order]
        )
