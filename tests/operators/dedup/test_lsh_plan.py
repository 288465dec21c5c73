"""The LSH planner: datasketch's optimum, sensible S-curves, a config that names itself."""

import numpy as np
import pytest
from datasketch.lsh import _false_negative_probability, _false_positive_probability, _optimal_param

from operators.dedup.lsh_plan import (
    S_CURVE_POINTS,
    MinHashConfig,
    collision_probability,
    error_integrals,
    optimal_bands_rows,
)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.85, 0.9])
@pytest.mark.parametrize("num_perm", [64, 128, 256])
@pytest.mark.parametrize("fn_weight", [0.5, 0.9])
def test_planner_matches_datasketch_optimum(threshold, num_perm, fn_weight):
    assert optimal_bands_rows(threshold, num_perm, 1 - fn_weight, fn_weight) == _optimal_param(
        threshold, num_perm, 1 - fn_weight, fn_weight
    )


def test_error_integrals_match_datasketch_quadrature():
    for b, r in [(14, 8), (9, 13), (20, 13), (2, 1)]:
        fp, fn = error_integrals(0.8, b, r)
        assert fp[0] == pytest.approx(_false_positive_probability(0.8, b, r), abs=1e-9)
        assert fn[0] == pytest.approx(_false_negative_probability(0.8, b, r), abs=1e-9)


def test_planner_picks_sensible_values():
    for t in (0.6, 0.7, 0.8, 0.9):
        b, r = optimal_bands_rows(t, 128, 0.1, 0.9)
        assert b * r <= 128 and b >= 2
        # recall-leaning weights put the S-curve's midpoint (1/b)^(1/r) below the threshold
        assert (1 / b) ** (1 / r) < t
        assert collision_probability(t, b, r) > 0.75
        assert collision_probability(t + 0.1, b, r) > 0.98
        assert collision_probability(t - 0.3, b, r) < 0.1
    # higher thresholds want longer bands
    rows = [optimal_bands_rows(t, 128)[1] for t in (0.5, 0.7, 0.9)]
    assert rows == sorted(rows)
    # the references in DESIGN.md: datatrove 14x8 sits near 0.72
    assert abs((1 / 14) ** (1 / 8) - 0.72) < 0.01


def test_config_report_and_name():
    cfg = MinHashConfig(ngram=5, num_perm=128, bands=14, rows=9)
    assert str(cfg) == "w5ng_14bs_9hs_128p_xxh3_affine32_s1"
    assert str(MinHashConfig(char_ngram=24, bands=20, rows=6, hash="sha1", seed=7)).startswith("c24ng_20bs_6hs")
    rep = cfg.report(0.8, 0.1, 0.9)
    assert list(rep["s_curve"]) == [f"{s:.2f}" for s in S_CURVE_POINTS]
    vals = list(rep["s_curve"].values())
    assert vals == sorted(vals) and vals[0] < 0.05 and vals[-1] > 0.999
    assert rep["bands"] == 14 and rep["rows"] == 9 and rep["p_at_threshold"] == pytest.approx(0.867, abs=1e-3)
    assert 0 < rep["expected_fn"] < rep["expected_fp"]
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashConfig(num_perm=64, bands=10, rows=8)


def test_collision_probability_is_the_s_curve():
    s = np.linspace(0, 1, 11)
    p = collision_probability(s, 14, 8)
    assert p[0] == 0 and p[-1] == 1 and np.all(np.diff(p) > 0)
    assert collision_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)  # datatrove's comment
