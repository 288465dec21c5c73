"""The train/holdout split: a deterministic fraction of each domain held out for evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from operators.base import Operator, register
from storage.run import HOLDOUT, TRAIN
from storage.schema import unit_hash, with_column


@register("split")
class Split(Operator):
    """Assign ``split`` = ``holdout`` to a deterministic fraction of each domain, ``train`` to the rest.

    The choice is a hash of (seed, id), so it does not depend on order, batching or cluster
    size, and re-running gives the same split.

    Args:
        holdout_fraction: fraction for every domain, or a mapping domain -> fraction
            (domains not in the mapping use ``default_fraction``).
        default_fraction: fraction for domains missing from a mapping.
        seed: changes which documents are held out.
    """

    adds = ("split",)

    def __init__(
        self,
        *,
        holdout_fraction: float | dict[str, float] = 0.01,
        default_fraction: float = 0.01,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        fracs = dict(holdout_fraction) if isinstance(holdout_fraction, dict) else {}
        checks = {**fracs, "default_fraction": default_fraction}
        if not fracs:
            checks["holdout_fraction"] = holdout_fraction
        for name, f in checks.items():
            if not 0.0 <= f < 1.0:
                raise ValueError(f"split: fraction for {name!r} must be in [0, 1), got {f}")
        self.fractions = fracs
        self.default = default_fraction if isinstance(holdout_fraction, dict) else holdout_fraction
        self.seed = seed

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        ids = batch.column("id").to_pylist()
        domains = batch.column("domain").to_pylist()
        out: list[str | None] = [None] * batch.num_rows
        for i in np.flatnonzero(active).tolist():
            frac = self.fractions.get(domains[i], self.default)
            out[i] = HOLDOUT if unit_hash(ids[i], self.seed) < frac else TRAIN
        return with_column(batch, "split", pa.array(out, pa.string()))
