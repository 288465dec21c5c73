"""The train/holdout split: a deterministic fraction of each domain held out for evaluation."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.base import NOT_BOOL, Operator, register
from storage.run import HOLDOUT, TRAIN
from storage.schema import unit_hash, with_column

#: a share of a domain held out: in [0, 1)
HoldoutFraction = Annotated[float, NOT_BOOL, Field(ge=0, lt=1)]


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
        holdout_fraction: HoldoutFraction | dict[str, HoldoutFraction] = 0.01,
        default_fraction: HoldoutFraction = 0.01,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        fracs = dict(holdout_fraction) if isinstance(holdout_fraction, dict) else {}
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
