"""Vectorised shingles and signatures against datasketch; band keys against MinHashLSH."""

import itertools

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash, MinHashLSH

from operators.dedup.ray_steps import ALL_PAIRS_MAX_BUCKET, bucket_pairs
from operators.dedup.signatures import (
    Permutations,
    band_keys,
    doc_uids,
    jaccard_binary,
    sets_to_binary,
    shingle_hashes,
    shingle_strings,
    signatures,
    unique_sets,
)

TEXTS = [
    "Hello, World! This is a test of the émergency broadcast system, café — naïve “quotes”.",
    "",
    None,
    "short text",
    "!!! ... ???",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Cafe\u0301 vs café; snake_case and 2024-11-22 numbers, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters and 中文字符 text.",
]


def _datasketch(shingles: list[str], num_perm: int, seed: int, scheme: str) -> np.ndarray:
    m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
    m.update_batch([s.encode("utf-8") for s in shingles])
    return m.hashvalues


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize(("ngram", "char_ngram"), [(5, None), (3, None), (5, 7)])
@pytest.mark.parametrize(("num_perm", "seed"), [(128, 1), (64, 7)])
def test_sha1_signatures_equal_datasketch(scheme, ngram, char_ngram, num_perm, seed):
    shingles = shingle_strings(TEXTS, ngram, char_ngram)
    h, off = shingle_hashes(TEXTS, ngram, char_ngram, "sha1")
    sig = signatures(h, off, Permutations(num_perm, seed, scheme))
    assert sig.shape == (len(TEXTS), num_perm)
    for d, sh in enumerate(shingles):
        assert np.array_equal(sig[d], _datasketch(sh, num_perm, seed, scheme)), d
    # the banded prefix is the same values (datasketch's LSH also reads the first b*r)
    assert np.array_equal(signatures(h, off, Permutations(num_perm, seed, scheme, used=50)), sig[:, :50])


def test_signatures_of_long_documents_cross_block_boundaries():
    words = " ".join(f"w{i}" for i in range(20_000))  # > one 8192-shingle block
    texts = ["a b c d e f", words, "x y z " * 3000, words[:5000]]
    h, off = shingle_hashes(texts, 5, None, "sha1")
    sig = signatures(h, off, Permutations(32, 3))
    for d, sh in enumerate(shingle_strings(texts, 5)):
        assert np.array_equal(sig[d], _datasketch(sh, 32, 3, "affine32"))


def test_shingles_normalise_case_punctuation_and_unicode():
    same = shingle_strings(["Hello, World!  It's   a café.", "hello world it s a cafe\u0301"], ngram=2)
    assert same[0] == same[1] == ["hello world", "world it", "it s", "s a", "a café"]
    assert shingle_strings(["one two"], ngram=5) == [["one two"]]  # fewer words than n: one shingle
    assert shingle_strings(["", None, "... !!"], ngram=5) == [[], [], []]
    assert shingle_strings(["snake_case 2024-11"], ngram=1) == [["snake", "case", "2024", "11"]]
    assert shingle_strings(["Ab, cd!"], char_ngram=3) == [["ab ", "b c", " cd"]]
    assert shingle_strings(["ab"], char_ngram=3) == [["ab"]]
    mixed = shingle_strings(["中文字符 𝔘𝔫 x"], ngram=1)[0]
    assert mixed == ["中文字符", "𝔘𝔫", "x"]


@pytest.mark.parametrize("char_ngram", [None, 6])
def test_xxh3_hashes_follow_the_same_shingles(char_ngram):
    h, off = shingle_hashes(TEXTS, 5, char_ngram)
    _, off_sha = shingle_hashes(TEXTS, 5, char_ngram, "sha1")
    assert np.array_equal(off, off_sha)
    # equal shingles hash equally, across documents and batches
    sh = [s for doc in shingle_strings(TEXTS, 5, char_ngram) for s in doc]
    by_text: dict[str, int] = {}
    for s, v in zip(sh, h.tolist()):
        assert by_text.setdefault(s, v) == v
    again, _ = shingle_hashes(list(reversed(TEXTS)), 5, char_ngram)
    assert sorted(again.tolist()) == sorted(h.tolist())
    assert len(set(h.tolist())) == len(by_text)  # no collisions among these


def test_xxh3_is_uniform_enough_for_minhash():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(3000)]
    base = list(rng.choice(vocab, 400))
    other = list(base)
    for j in rng.choice(400, 20, replace=False):
        other[j] = "zz"
    texts = [" ".join(base), " ".join(other)]
    sets = [set(s) for s in shingle_strings(texts, 5)]
    true_j = len(sets[0] & sets[1]) / len(sets[0] | sets[1])
    h, off = shingle_hashes(texts, 5)
    sig = signatures(h, off, Permutations(1024, 1))
    est = float(np.mean(sig[0] == sig[1]))
    assert abs(est - true_j) < 0.06


def test_exact_jaccard_of_packed_sets():
    texts = ["a b c d e f g h", "a b c d e f g x", "q r s", "a b c d e f g h", "z"]
    vals, off = unique_sets(*shingle_hashes(texts, 2, None, "sha1"))
    packed = sets_to_binary(vals, off)
    pairs = list(itertools.combinations(range(len(texts)), 2))
    got = jaccard_binary(packed.take([i for i, _ in pairs]), packed.take([j for _, j in pairs]))
    sets = [set(s) for s in shingle_strings(texts, 2)]
    want = [len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in pairs]
    assert np.allclose(got, want)
    assert np.diff(off).tolist() == [len(s) for s in sets]


def _our_candidates(texts, bands, rows):
    h, off = shingle_hashes(texts, 5, None, "sha1")
    sig = signatures(h, off, Permutations(128, 1))
    keys = band_keys(sig, bands, rows)
    n = len(texts)
    a, b, _ = bucket_pairs(keys.ravel(), np.repeat(np.arange(n, dtype=np.int64), bands))
    return {(int(x), int(y)) for x, y in zip(a, b)}


def test_lsh_candidates_equal_datasketch_minhashlsh():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(800)]
    base = [list(rng.choice(vocab, 120)) for _ in range(12)]
    texts = []
    for doc in base:  # each base with variants at decreasing similarity
        texts.append(" ".join(doc))
        for k in (2, 6, 12, 25):
            v = list(doc)
            for j in rng.choice(len(v), k, replace=False):
                v[j] = f"x{rng.integers(1_000_000)}"
            texts.append(" ".join(v))
    for bands, rows in [(16, 8), (9, 13), (32, 4)]:
        lsh = MinHashLSH(num_perm=128, params=(bands, rows))
        mhs = [MinHash(128, seed=1) for _ in texts]
        for i, (m, sh) in enumerate(zip(mhs, shingle_strings(texts, 5))):
            m.update_batch([s.encode() for s in sh])
            lsh.insert(i, m)
        theirs = {(min(i, j), max(i, j)) for i, m in enumerate(mhs) for j in lsh.query(m) if i != j}
        ours = _our_candidates(texts, bands, rows)
        assert ours == theirs, (bands, rows)
        assert theirs  # the set is not trivially empty


def test_large_buckets_emit_a_star_and_a_chain():
    n = ALL_PAIRS_MAX_BUCKET * 5
    uid = np.arange(100, 100 + n, dtype=np.int64)[::-1].copy()
    a, b, sizes = bucket_pairs(np.zeros(n, dtype=np.int64), uid)
    assert sizes.tolist() == [n]
    assert len(a) == 2 * n - 3 and np.all(a < b)
    assert set(b.tolist()) == set(range(101, 100 + n))  # every member linked
    small_a, small_b, _ = bucket_pairs(np.array([5, 5, 5, 9], np.int64), np.array([3, 1, 2, 4], np.int64))
    assert sorted(zip(small_a.tolist(), small_b.tolist())) == [(1, 2), (1, 3), (2, 3)]


def test_doc_uids_are_stable_int64():
    u = doc_uids(pa.array(["a", "b", "a"]))
    assert u.dtype == np.int64 and u[0] == u[2] != u[1]
    assert np.array_equal(doc_uids(["a", "b"]), u[:2])
