"""minhash_dedup on Ray Data: planted near-duplicates, chains, determinism, verification, the runner."""

import json

import numpy as np
import pyarrow as pa
import pytest

from operators.base import StageContext
from operators.dedup.minhash import MinHashDedup
from operators.dedup.signatures import shingle_strings
from pipelines.recipe import parse_recipe
from pipelines.runner import run
from storage.schema import READ_SCHEMA
from storage.shards import read_shards
from tests.conftest import write_jsonl

pytestmark = pytest.mark.usefixtures("ray_session")

RNG = np.random.default_rng(42)
VOCAB = [f"{w}{i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta", "omega"] * 400)]


def _doc(n=150):
    return list(RNG.choice(VOCAB, n))


def _edit(words, k, at=None):
    """Replace k words (a block at ``at``, else scattered) with fresh ones."""
    out = list(words)
    where = range(at, at + k) if at is not None else RNG.choice(len(out), k, replace=False)
    for j in where:
        out[j] = f"new{RNG.integers(10**9)}"
    return out


def jaccard(x: str, y: str) -> float:
    a, b = (set(s) for s in shingle_strings([x, y], 5))
    return len(a & b) / len(a | b)


def _corpus():
    """Planted pairs at known word-5-gram Jaccard, a chain, a triple, distinct and empty docs."""
    docs: dict[str, str] = {}
    truth: dict[str, float] = {}
    for i, k in enumerate([1, 2, 3, 5, 7, 9]):  # high similarity: one edited block, J ~ 0.84-0.93
        base = _doc()
        docs[f"h{i}a"], docs[f"h{i}b"] = " ".join(base), " ".join(_edit(base, k, at=60))
        truth[f"h{i}"] = jaccard(docs[f"h{i}a"], docs[f"h{i}b"])
    for i, k in enumerate([7, 8, 9, 10]):  # below the threshold: scattered edits, J ~ 0.5-0.65
        base = _doc()
        docs[f"l{i}a"], docs[f"l{i}b"] = " ".join(base), " ".join(_edit(base, k))
        truth[f"l{i}"] = jaccard(docs[f"l{i}a"], docs[f"l{i}b"])
    base = _doc(300)  # chain: A ~ B ~ C but A !~ C
    docs["ca"], docs["cb"], docs["cc"] = (
        " ".join(_edit(base, 20, at=0)),
        " ".join(base),
        " ".join(_edit(base, 20, at=280)),
    )
    base = _doc()
    for s in "xyz":
        docs[f"t{s}"] = " ".join(_edit(base, 1))
    for i in range(10):
        docs[f"u{i}"] = " ".join(_doc())
    docs["e0"], docs["e1"] = "", "!!! ???"
    return docs, truth


DOCS, TRUTH = _corpus()


def _table(docs: dict[str, str], extra: dict | None = None) -> pa.Table:
    ids = list(docs)
    n = len(ids)
    cols = {f.name: pa.nulls(n, f.type) for f in READ_SCHEMA}
    cols.update(id=pa.array(ids), text=pa.array([docs[i] for i in ids]), domain=pa.array(["web"] * n))
    cols["quality"] = pa.array([float(sum(map(ord, i))) for i in ids])
    for k, v in (extra or {}).items():
        cols[k] = v
    return pa.table(cols)


def _dedup(table: pa.Table, params: dict, blocks: int):
    import ray.data

    step = max(1, -(-table.num_rows // blocks))
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)] or [table])
    prepared = MinHashDedup.prepare(ds, params, StageContext(num_partitions=2))
    out = MinHashDedup(stage="minhash_dedup", **params, _shared=prepared.shared)(table)
    rows = {r["id"]: r for r in out.to_pylist()}
    return rows, prepared.report


LIBERAL = {"bands": 32, "rows": 4}  # P(candidate) ~ 0.87 at s = 0.5: verification has work to do


@pytest.fixture(scope="module")
def verified():
    return _dedup(_table(DOCS), {**LIBERAL, "verify": True}, blocks=3)


def test_planted_corpus_is_what_it_says():
    assert all(0.83 <= TRUTH[f"h{i}"] < 0.95 for i in range(6))
    assert all(0.45 <= TRUTH[f"l{i}"] <= 0.7 for i in range(4))
    assert jaccard(DOCS["ca"], DOCS["cb"]) >= 0.8 and jaccard(DOCS["cb"], DOCS["cc"]) >= 0.8
    assert jaccard(DOCS["ca"], DOCS["cc"]) < 0.8


def test_planted_near_duplicates_found_and_distinct_kept(verified):
    rows, report = verified
    for i in range(6):
        a, b = rows[f"h{i}a"], rows[f"h{i}b"]
        assert a["reason"] is None and a["dup_cluster"] >= 0 and a["dup_cluster_size"] == 2
        assert b["reason"] == "minhash_duplicate" and b["stage"] == "minhash_dedup" and b["dup_of"] == f"h{i}a"
        assert a["dup_cluster"] == b["dup_cluster"]
    for i in range(4):  # below the threshold: candidates, but verification drops them
        for s in "ab":
            assert rows[f"l{i}{s}"]["reason"] is None and rows[f"l{i}{s}"]["dup_cluster"] == -1
    for k in [*(f"u{i}" for i in range(10)), "e0", "e1"]:
        assert rows[k]["reason"] is None and rows[k]["dup_cluster"] == -1 and rows[k]["dup_cluster_size"] == 1
    assert {rows[f"t{s}"]["dup_of"] for s in "yz"} == {"tx"} and rows["tx"]["dup_cluster_size"] == 3
    assert report["candidate_pairs"] > report["verified_pairs"]  # the low pairs were candidates
    assert report["documents_with_shingles"] == len(DOCS) - 2 and report["largest_bucket"] >= 3
    assert report["band_rows"] == 32 * (len(DOCS) - 2) and report["multi_document_buckets"] > 0
    assert report["clusters"] == 6 + 1 + 1 and report["duplicates_removed"] == 6 + 2 + 2
    assert report["cluster_size_histogram"] == {"2": 6, "3-4": 2}
    assert report["plan"]["bands"] == 32 and report["plan"]["rows"] == 4 and len(report["plan"]["s_curve"]) == 10
    assert set(report["seconds"]) >= {"signatures_and_buckets", "verify", "components", "survivors"}
    assert sum(report["candidate_jaccard_histogram"].values()) == report["candidate_pairs"]


def test_chain_collapses_to_one_cluster(verified):
    rows, _ = verified
    chain = [rows[k] for k in ("ca", "cb", "cc")]
    assert len({r["dup_cluster"] for r in chain}) == 1 and chain[0]["dup_cluster"] >= 0
    assert all(r["dup_cluster_size"] == 3 for r in chain)
    assert rows["ca"]["reason"] is None  # lowest id survives, even though "cc" is not similar to it
    assert rows["cb"]["dup_of"] == rows["cc"]["dup_of"] == "ca"


def test_deterministic_across_block_layouts(verified):
    rows, report = verified
    table = _table(DOCS)
    shuffled = table.take(pa.array(np.random.default_rng(7).permutation(table.num_rows)))
    again, report2 = _dedup(shuffled, {**LIBERAL, "verify": True}, blocks=5)
    keep = ("reason", "dup_of", "dup_cluster", "dup_cluster_size")
    assert {k: [r[c] for c in keep] for k, r in again.items()} == {k: [r[c] for c in keep] for k, r in rows.items()}
    assert report2["verified_pairs"] == report["verified_pairs"]
    assert report2["candidate_pairs"] == report["candidate_pairs"]


def test_without_verification_candidates_are_edges_and_scores_pick_survivors():
    # a copy in another domain must be ignored; a prior dup_cluster value on it stays as it was
    docs = {**DOCS, "zz-code": DOCS["h0a"]}
    table = _table(docs)
    domain = ["code" if i == "zz-code" else "web" for i in docs]
    prior = [7 if i == "zz-code" else None for i in docs]
    table = table.set_column(table.schema.get_field_index("domain"), "domain", pa.array(domain))
    table = table.append_column("dup_cluster", pa.array(prior, pa.int64()))
    params = {**LIBERAL, "verify": False, "survivor": "highest:quality", "domains": ["web"]}
    rows, report = _dedup(table, params, blocks=2)
    assert report["candidate_pairs"] == report["verified_pairs"] and not report["candidate_jaccard_histogram"]
    merged = [i for i in range(4) if rows[f"l{i}a"]["dup_cluster"] >= 0]
    assert len(merged) >= 2  # unverified low-similarity candidates become duplicates
    for i in merged:
        a, b = rows[f"l{i}a"], rows[f"l{i}b"]
        win, lose = (a, b) if a["quality"] > b["quality"] else (b, a)
        assert win["reason"] is None and lose["reason"] == "minhash_duplicate" and lose["dup_of"] == win["id"]
    assert rows["zz-code"]["reason"] is None and rows["zz-code"]["dup_cluster"] == 7
    assert rows["zz-code"]["dup_cluster_size"] is None


def test_other_shingles_hashes_and_schemes_and_an_empty_input():
    words = " ".join(_doc(60))
    docs = {"p1": words, "p2": words.upper() + "!", "q": " ".join(_doc(60)), "r": "tiny"}
    params = {"char_ngram": 7, "hash": "sha1", "scheme": "legacy", "num_perm": 64, "threshold": 0.9}
    rows, report = _dedup(_table(docs), params, blocks=2)
    assert rows["p2"]["dup_of"] == "p1" and rows["q"]["dup_cluster"] == -1 and rows["r"]["dup_cluster"] == -1
    assert report["plan"]["config"].startswith("c7ng_") and report["plan"]["num_perm"] == 64
    empty, report = _dedup(_table({}), {}, blocks=1)
    assert empty == {} and report["candidate_pairs"] == 0 and report["clusters"] == 0


def test_bad_parameters_fail_at_construction():
    with pytest.raises(ValueError, match="threshold"):
        MinHashDedup(stage="m", threshold=1.5)
    with pytest.raises(ValueError, match="both bands and rows"):
        MinHashDedup(stage="m", bands=4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashDedup(stage="m", bands=20, rows=10)
    with pytest.raises(ValueError, match="survivor"):
        MinHashDedup(stage="m", survivor="best")
    assert str(MinHashDedup(stage="m").config) == "w5ng_14bs_9hs_128p_xxh3_affine32_s1"


def test_end_to_end_through_the_runner(tmp_path):
    """Through the runner with Ray's default shuffle (the other tests use the operator's default, sort)."""
    ids = sorted(DOCS)
    half = len(ids) // 2
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": i, "text": DOCS[i]} for i in ids[half:]])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": i, "text": DOCS[i]} for i in ids[:half]])
    recipe = parse_recipe(
        f"""inputs:
  - {{path: "{tmp_path}/in/*.jsonl", domain: web, id_field: id}}
stages:
  - {{op: minhash_dedup, threshold: 0.8, shuffle: ray_default}}
output: {{dir: "{tmp_path}/out", shard_mb: 0.01}}
"""
    )
    m = run(recipe)
    c = m["conservation"]
    assert c["ok"] and c["read"] == len(DOCS) == c["kept"] + c["removed"]
    inputs = read_shards(str(tmp_path / "out" / "removed" / "stage=input")).to_pylist()
    assert {r["id"]: r["reason"] for r in inputs} == {"e0": "input_empty_text"}
    removed = read_shards(str(tmp_path / "out" / "removed" / "stage=minhash_dedup")).to_pylist()
    dups = {r["id"]: r["dup_of"] for r in removed}
    assert {r["reason"] for r in removed} == {"minhash_duplicate"}
    assert {f"h{i}b": f"h{i}a" for i in range(6)}.items() <= dups.items()
    assert dups["ty"] == dups["tz"] == "tx" and dups["cb"] == dups["cc"] == "ca"
    kept = {r["id"]: r for r in read_shards(str(tmp_path / "out" / "shards")).to_pylist()}
    assert set(kept) | set(dups) == set(DOCS) - {"e0"} and not set(kept) & set(dups)
    assert kept["tx"]["dup_cluster_size"] == 3 and kept["ca"]["dup_cluster_size"] == 3
    assert kept["u0"]["dup_cluster"] == -1 and kept["u0"]["dup_cluster_size"] == 1
    assert {r["dup_cluster"] for r in removed} <= {r["dup_cluster"] for r in kept.values()}
    stage = next(s for s in m["stages"] if s["stage"] == "minhash_dedup")
    assert stage["removed"] == {"minhash_duplicate": len(dups)}
    assert stage["report"]["duplicates_removed"] == len(dups)
    assert stage["report"]["plan"]["config"] == "w5ng_14bs_9hs_128p_xxh3_affine32_s1"
    json.dumps(stage["report"])  # the manifest report is plain JSON
