"""MinHash LSH planning: the shared config, the (bands, rows) planner and its S-curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: similarities at which the manifest reports the S-curve P(s) = 1 - (1 - s^r)^b
S_CURVE_POINTS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def collision_probability(s, bands: int, rows: int) -> np.ndarray:
    """P(two documents with Jaccard ``s`` share at least one of ``bands`` buckets of ``rows`` values)."""
    s = np.asarray(s, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


def _gauss_legendre(lo: float, hi: float, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights that integrate polynomials up to ``degree`` exactly on [lo, hi]."""
    n = degree // 2 + 1
    x, w = np.polynomial.legendre.leggauss(n)
    half = (hi - lo) / 2.0
    return lo + half * (x + 1.0), half * w


def error_integrals(threshold: float, bands, rows) -> tuple[np.ndarray, np.ndarray]:
    """Expected false positives and false negatives, as datasketch defines them.

    FP = ∫_0^t P(s) ds and FN = ∫_t^1 (1 - P(s)) ds. P is a polynomial in s of degree
    bands·rows, so Gauss–Legendre quadrature with enough nodes is exact (up to rounding);
    datasketch evaluates the same integrals with ``scipy.integrate.quad``. Vectorised over
    arrays of (bands, rows).
    """
    b = np.atleast_1d(np.asarray(bands, dtype=np.float64))[:, None]
    r = np.atleast_1d(np.asarray(rows, dtype=np.float64))[:, None]
    degree = int(np.max(b * r))
    xs, ws = _gauss_legendre(0.0, threshold, degree)
    fp = (1.0 - (1.0 - xs[None, :] ** r) ** b) @ ws
    xs, ws = _gauss_legendre(threshold, 1.0, degree)
    fn = ((1.0 - xs[None, :] ** r) ** b) @ ws
    return fp, fn


def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """The (bands, rows) with bands·rows ≤ num_perm minimising fp_weight·FP + fn_weight·FN.

    Same search space, order and tie rule as datasketch's ``lsh._optimal_param`` (bands
    ascending, then rows ascending, first strict minimum wins), so both pick the same pair.
    """
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])
    fp, fn = error_integrals(threshold, pairs[:, 0], pairs[:, 1])
    err = fp_weight * fp + fn_weight * fn
    b, r = pairs[int(np.argmin(err))]  # argmin returns the first minimum, like datasketch's strict `<`
    return int(b), int(r)


@dataclass(frozen=True)
class MinHashConfig:
    """Every setting that decides which documents collide, in one place.

    ``str()`` names the values (datatrove's ``MinhashConfig`` prints ``5ng_14bs_8hs``), e.g.
    ``w5ng_14bs_9hs_128p_xxh3_affine32_s1``: word 5-grams, 14 bands of 9 rows, 128
    permutations, xxh3 shingle hashes, datasketch's ``affine32`` permutation scheme, seed 1.

    Args:
        ngram: words per shingle (ignored when ``char_ngram`` is set).
        char_ngram: characters per shingle instead of words, or ``None``.
        num_perm: permutations drawn (datasketch's ``num_perm``); the first bands·rows are used.
        bands: LSH bands.
        rows: signature values per band.
        seed: the permutation seed, with datasketch's meaning.
        hash: shingle hash: ``xxh3`` (fast, numba kernels) or ``sha1`` (datasketch's ``sha1_hash32``).
        scheme: datasketch's permutation scheme: ``affine32`` (its 2.x default) or ``legacy``.
    """

    ngram: int = 5
    char_ngram: int | None = None
    num_perm: int = 128
    bands: int = 14
    rows: int = 9
    seed: int = 1
    hash: str = "xxh3"
    scheme: str = "affine32"

    def __post_init__(self) -> None:
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"bands and rows must be >= 1, got bands={self.bands}, rows={self.rows}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands*rows = {self.bands}*{self.rows} = {self.bands * self.rows} exceeds num_perm={self.num_perm}"
            )

    def __str__(self) -> str:
        gram = f"c{self.char_ngram}ng" if self.char_ngram else f"w{self.ngram}ng"
        return f"{gram}_{self.bands}bs_{self.rows}hs_{self.num_perm}p_{self.hash}_{self.scheme}_s{self.seed}"

    @property
    def used_perm(self) -> int:
        """Signature values that take part in banding (datasketch ignores the rest too)."""
        return self.bands * self.rows

    def s_curve(self) -> dict[str, float]:
        """P(candidate) at s = 0.50, 0.55, …, 0.95."""
        p = collision_probability(np.array(S_CURVE_POINTS), self.bands, self.rows)
        return {f"{s:.2f}": round(float(v), 4) for s, v in zip(S_CURVE_POINTS, p)}

    def report(self, threshold: float, fp_weight: float, fn_weight: float) -> dict:
        """The plan as the manifest records it: values, S-curve, expected errors at ``threshold``."""
        fp, fn = error_integrals(threshold, self.bands, self.rows)
        return {
            "config": str(self),
            "threshold": threshold,
            "num_perm": self.num_perm,
            "bands": self.bands,
            "rows": self.rows,
            "weights": {"false_positive": round(fp_weight, 6), "false_negative": round(fn_weight, 6)},
            # datasketch's integrals, and the same as mean rates over uniform s below/above t
            "expected_fp": round(float(fp[0]), 6),
            "expected_fn": round(float(fn[0]), 6),
            "fp_rate_below_threshold": round(float(fp[0]) / threshold, 6) if threshold > 0 else 0.0,
            "fn_rate_above_threshold": round(float(fn[0]) / (1 - threshold), 6) if threshold < 1 else 0.0,
            "p_at_threshold": round(float(collision_probability(threshold, self.bands, self.rows)), 4),
            "s_curve": self.s_curve(),
        }
