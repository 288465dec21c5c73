"""tokenize writes ids with EOS; split is a deterministic per-domain holdout."""

import pyarrow as pa
import pytest

from operators.tokenize import Split, Tokenize
from storage.schema import READ_SCHEMA


def _batch(texts, domains=None, removed=()):
    n = len(texts)
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols.update(id=[f"d{i}" for i in range(n)], text=texts, domain=domains or ["web"] * n, source=["t"] * n)
    cols["reason"] = ["x" if i in removed else None for i in range(n)]
    return pa.table(cols, schema=READ_SCHEMA)


def test_tokenize_appends_eos_and_counts():
    op = Tokenize(stage="tokenize")
    out = op(_batch(["Hello world", "Another document here."], removed=()))
    toks = out.column("tokens").to_pylist()
    assert all(t[-1] == op.eos for t in toks)
    assert op.tok.decode(toks[0][:-1]) == "Hello world"
    assert out.column("n_tokens").to_pylist() == [len(t) for t in toks]
    assert out.schema.field("tokens").type == pa.list_(pa.int32())


def test_tokenize_skips_removed_rows_and_truncates():
    op = Tokenize(stage="tokenize", max_tokens=2)
    out = op(_batch(["one two three four five", "six"], removed=(1,)))
    assert out.column("n_tokens").to_pylist() == [3, None]


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
    with pytest.raises(ValueError, match=r"fraction for 'holdout_fraction' must be in \[0, 1\), got 1.5"):
        Split(stage="split", holdout_fraction=1.5)
