"""Unique document ids: the ``input_ids`` stage removes records that repeat an id seen in an earlier file."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.base import GlobalStage, Prepared, StageContext, mark_removed, register, share
from operators.grouping import repeated

REASON_DUPLICATE_ID = "input_duplicate_id"


@register("input_ids")
class InputIds(GlobalStage):
    """Keep the first record of every id; later ones go to ``removed/`` as ``input_duplicate_id``.

    The recipe adds this stage first when every input with an ``id_field`` says
    ``on_duplicate_id: remove`` (the default, ``error``, fails the run on a duplicate instead).
    Repeats within one file are removed by the reader, in file order; across files the record
    from the file whose path sorts first (byte order) survives. ``dup_of`` holds the id.
    Pass 1 groups live ids (count, first source; :mod:`operators.grouping`) and keeps
    the repeated ones; pass 2 marks every row of a repeated id that is not from its first source.
    """

    @classmethod
    def prepare(cls, ds, params: dict[str, Any], ctx: StageContext) -> Prepared:
        table = repeated(ds.select_columns(["id", "source"]), "id", "source", ctx)
        return Prepared({"dups": share(ds, table.select(["id", "first"]))}, {"repeated_ids": int(table.num_rows)})

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        dups = self.shared("dups")
        if dups.num_rows == 0:
            return batch
        idx = np.flatnonzero(active)
        probe = pa.table(
            {
                "id": batch.column("id").take(pa.array(idx)),
                "source": batch.column("source").take(pa.array(idx)),
                "_row": pa.array(idx, pa.int64()),
            }
        )
        hits = probe.join(dups, "id", join_type="inner")
        later = pc.not_equal(hits.column("source"), hits.column("first")).to_numpy(zero_copy_only=False)
        rows = hits.column("_row").to_numpy()[later]
        if rows.size == 0:
            return batch
        ids = hits.column("id").filter(pa.array(later)).to_pylist()
        order = np.argsort(rows)
        return mark_removed(batch, rows[order], [REASON_DUPLICATE_ID] * rows.size, self.stage, [ids[i] for i in order])
