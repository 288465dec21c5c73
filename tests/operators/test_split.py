"""split is a deterministic per-domain holdout."""

import pytest

from operators.split import Split
from tests.operators.test_tokenize import _batch


def test_split_is_deterministic_and_near_the_fraction():
    texts = ["x"] * 4000
    doms = ["a"] * 2000 + ["b"] * 2000
    op = Split(stage="split", holdout_fraction={"a": 0.1, "b": 0.5}, seed=3)
    s1 = op(_batch(texts, doms)).column("split").to_pylist()
    s2 = Split(stage="split", holdout_fraction={"a": 0.1, "b": 0.5}, seed=3)(_batch(texts, doms)).column("split")
    assert s1 == s2.to_pylist()
    a = s1[:2000].count("holdout") / 2000
    b = s1[2000:].count("holdout") / 2000
    assert 0.07 < a < 0.13 and 0.45 < b < 0.55
    other = Split(stage="split", holdout_fraction={"a": 0.1, "b": 0.5}, seed=4)(_batch(texts, doms))
    assert other.column("split").to_pylist() != s1


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match=r"holdout_fraction: Input should be less than 1, got 1.5"):
        Split(stage="split", holdout_fraction=1.5)
    with pytest.raises(ValueError, match=r"holdout_fraction.b: Input should be greater than or equal to 0, got -0.1"):
        Split(stage="split", holdout_fraction={"a": 0.1, "b": -0.1})
