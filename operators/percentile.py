"""Whole-dataset selection on a stored score column: percentile bands with exact thresholds."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AfterValidator

from operators.base import GlobalStage, Prepared, StageContext, mark_removed, register, tables
from storage.schema import SCORE_FIELDS

logger = logging.getLogger(__name__)

#: percentiles every band report records (besides the chosen thresholds)
REPORT_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
#: the key of the whole-dataset thresholds when ``per_domain`` is off
ALL = "*"


def whitespace_tokens(texts: list[str | None]) -> np.ndarray:
    """Whitespace-separated token counts (Python ``str.split``), the budget unit when ``n_tokens`` is absent."""
    return np.fromiter((len(t.split()) if t else 0 for t in texts), dtype=np.int64, count=len(texts))


def token_weights(batch: pa.Table, rows: np.ndarray) -> np.ndarray:
    """Tokens of ``rows``: ``n_tokens`` where the column exists and is set, else whitespace tokens."""
    texts = batch.column("text").take(pa.array(rows, pa.int64())).to_pylist()
    out = whitespace_tokens(texts)
    if "n_tokens" in batch.column_names:
        nt = batch.column("n_tokens").take(pa.array(rows, pa.int64())).to_pylist()
        out = np.array([w if n is None else n for n, w in zip(nt, out)], dtype=np.int64)
    return out


def _numeric(column: str) -> bool:
    t = SCORE_FIELDS.get(column)
    return t is not None and (pa.types.is_floating(t) or pa.types.is_integer(t))


def _band(v: tuple[float, float]) -> tuple[float, float]:
    if not (0.0 <= v[0] < v[1] <= 100.0):
        raise ValueError(f"a percentile band must satisfy 0 <= low < high <= 100, got [{v[0]:g}, {v[1]:g}]")
    return v


#: ``[low, high]`` percentiles, 0 <= low < high <= 100
PercentileBand = Annotated[tuple[float, float], AfterValidator(_band)]


@register("percentile_filter")
class PercentileFilter(GlobalStage):
    """Keep rows whose ``column`` lies inside a percentile band of its whole-dataset distribution.

    Pass 1 (``prepare``) collects the column's non-null values of every live row (within
    ``domains``) with a Ray Data pass and computes *exact* percentiles on the driver with
    polars (linear interpolation, numpy's default): one float and one domain per row, about
    10 bytes a row, so 100M rows need ~1 GB on the driver. Pass 2 marks rows below the low
    threshold ``<prefix>_below_band`` and above the high one ``<prefix>_above_band``; a row on a
    threshold is kept. A band edge of 0 (or 100) cuts nothing on that side. Rows whose score is
    null (not scored) pass through untouched. Usually created by ``expand`` of a scoring stage
    (``perplexity`` with ``keep: {percentile_band: …}``, ``quality_classifier`` with
    ``top_fraction``), not written in recipes by hand.

    Args:
        column: the score column (declared in storage.schema.SCORE_FIELDS, numeric).
        band: ``[low, high]`` percentiles in [0, 100], low < high; rows inside are kept.
        per_domain: compute thresholds separately for every domain (CCNet's buckets are per language).
        reason_prefix: prefix of the reason codes; default: the column name.
    """

    def __init__(
        self,
        *,
        column: str,
        band: PercentileBand,
        per_domain: bool = False,
        reason_prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not _numeric(column):
            numeric = ", ".join(k for k in SCORE_FIELDS if _numeric(k))
            raise ValueError(
                f"percentile_filter: column {column!r} is not a numeric score column; use one of {numeric}"
            )
        lo, hi = (float(b) for b in band)
        self.column = column
        self.band = (lo, hi)
        self.per_domain = per_domain
        self.prefix = reason_prefix or column

    @classmethod
    def prepare(cls, ds, params: dict[str, Any], ctx: StageContext) -> Prepared:
        import polars as pl

        probe = cls(stage="prepare", **params)
        col = probe.column

        def values(batch: pa.Table) -> pa.Table:
            if col not in batch.column_names:
                raise ValueError(f"percentile_filter: column {col!r} is missing; put its scoring stage before this one")
            mask = pa.array(probe.active(batch))
            mask = pc.and_(mask, pc.is_valid(batch.column(col)))
            return pa.table(
                {
                    "domain": batch.column("domain").filter(mask).cast(pa.string()),
                    "v": batch.column(col).filter(mask).cast(pa.float64()),
                }
            )

        parts = [t for t in tables(ds.map_batches(values, batch_format="pyarrow")) if t.num_rows]
        df = pl.from_arrow(pa.concat_tables(parts)) if parts else pl.DataFrame({"domain": [], "v": []})
        if not probe.per_domain:
            df = df.with_columns(pl.lit(ALL).alias("domain"))
        lo, hi = probe.band
        qs = sorted({lo, hi, *REPORT_PERCENTILES})
        stats = (
            df.group_by("domain")
            .agg(pl.len().alias("rows"), *[pl.col("v").quantile(q / 100, "linear").alias(f"q{q:g}") for q in qs])
            .sort("domain")
        )
        thresholds: dict[str, tuple[float | None, float | None]] = {}
        report_t: dict[str, dict] = {}
        report_p: dict[str, dict] = {}
        for row in stats.iter_rows(named=True):
            d = row["domain"]
            low = row[f"q{lo:g}"] if lo > 0 else None
            high = row[f"q{hi:g}"] if hi < 100 else None
            thresholds[d] = (low, high)
            report_t[d] = {"low": low, "high": high, "rows": row["rows"]}
            report_p[d] = {f"p{q:g}": row[f"q{q:g}"] for q in REPORT_PERCENTILES}
        report = {
            "column": col,
            "band": [lo, hi],
            "per_domain": probe.per_domain,
            "method": "exact percentiles (polars, linear interpolation) over all live scored rows",
            "thresholds": report_t,
            "percentiles": report_p,
        }
        logger.info("percentile_filter %s band [%g, %g]: thresholds %s", col, lo, hi, report_t)
        return Prepared({"thresholds": thresholds}, report)

    def apply(self, batch: pa.Table, active: np.ndarray) -> pa.Table:
        thresholds = self.shared("thresholds")
        if self.column not in batch.column_names:
            return batch
        scores = batch.column(self.column).to_pylist()
        domains = batch.column("domain").to_pylist()
        rows: list[int] = []
        reasons: list[str] = []
        for i in np.flatnonzero(active).tolist():
            v = scores[i]
            t = thresholds.get(domains[i] if self.per_domain else ALL)
            if v is None or t is None:
                continue
            low, high = t
            if low is not None and v < low:
                rows.append(i)
                reasons.append(f"{self.prefix}_below_band")
            elif high is not None and v > high:
                rows.append(i)
                reasons.append(f"{self.prefix}_above_band")
        if not rows:
            return batch
        return mark_removed(batch, np.asarray(rows), reasons, self.stage)


def band_stage(
    name: str, column: str, band: tuple[float, float], per_domain: bool, domains: list[str] | None
) -> dict[str, Any]:
    """The recipe stage dict of a percentile band selection (for ``Operator.expand``)."""
    return {
        "op": "percentile_filter",
        "name": name,
        "column": column,
        "band": [float(band[0]), float(band[1])],
        "per_domain": per_domain,
        "domains": domains,
    }
