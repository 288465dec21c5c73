"""The numba kernels against their references: xxhash for XXH3-64, the numpy definitions for shingles and signatures."""

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.dedup.kernels import xxh3_64
from operators.dedup.signatures import (
    Permutations,
    _signatures_numpy,
    _word_shingles_kernel,
    _word_shingles_numpy,
    shingle_hashes,
    signatures,
)

TEXTS = [
    "Hello, World! This is a test of the émergency broadcast system, café — naïve “quotes”.",
    "",
    None,
    "one",
    "two words",
    "three short words",
    "!!! ... ??? — ¿¡",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Cafe\u0301 vs café; snake_case and 2024-11-22 numbers, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters and 中文字符 text.",
    "İSTANBUL ǅemal ΣΊΣΥΦΟΣ ẞtraße ﬁnance Ⱥ — case mappings that change byte lengths",
    "中" * 500 + " a single 1500-byte word, then more words",  # a word past XXH3's 240-byte and 1024-byte paths
    "x" * 3000 + " y z",
    "😀 emoji are not letters 😀 🇺🇸 but 𐐀𐐨 (Deseret) are",
    "tab\tseparated\nlines\r\nand\u00a0no-break\u2003spaces",
    "\u0915\u094d\u0937 Devanagari marks ि inside words, ١٢٣ Arabic-Indic digits, Ⅻ roman numerals",
]


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_word_kernel_equals_numpy_definition(n):
    h, off = _word_shingles_kernel(TEXTS, n)
    want_h, want_off = _word_shingles_numpy(TEXTS, n)
    assert np.array_equal(off, want_off)
    assert h.dtype == np.uint32 and np.array_equal(h, want_h)
    counts = np.diff(off)
    assert counts[1] == counts[2] == counts[6] == 0  # empty, null and punctuation-only documents have no shingles
    assert counts[3] == 1 and counts[5] == max(3 - n + 1, 1)  # fewer words than n: one shingle of them all


def test_word_kernel_on_sliced_chunked_and_ascii_batches():
    arr = pa.array(TEXTS * 3, pa.string())
    for texts in (arr.slice(5, 20), pa.chunked_array([arr.slice(0, 7), arr.slice(7, 9)]), arr.cast(pa.large_string())):
        got, want = _word_shingles_kernel(texts, 5), _word_shingles_numpy(texts, 5)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    ascii_only = [t for t in TEXTS if t is None or t.isascii()]  # the batch path without NFC or astral code points
    got, want = _word_shingles_kernel(ascii_only, 3), _word_shingles_numpy(ascii_only, 3)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert _word_shingles_kernel([], 5)[0].size == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=80) | st.none(), max_size=12), st.integers(1, 6))
def test_word_kernel_equals_numpy_on_any_text(texts, n):
    got, want = _word_shingles_kernel(texts, n), _word_shingles_numpy(texts, n)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_xxh3_equals_xxhash_in_every_length_class():
    buf = np.random.default_rng(0).integers(0, 256, 5200, dtype=np.uint8)
    lengths = [*range(0, 260), 1023, 1024, 1025, 1088, 2047, 2048, 2049, 4096, 5000]
    for n in lengths:
        for p in (0, 3):
            assert int(xxh3_64(buf, p, n)) == xxhash.xxh3_64_intdigest(buf[p : p + n].tobytes()), (n, p)


@pytest.mark.parametrize("used", [128, 126, 7])
def test_signature_kernel_equals_numpy(used):
    rng = np.random.default_rng(used)
    counts = rng.integers(0, 40, 300)
    counts[[0, 5, 299]] = 0
    counts[7] = 20_000  # crosses the numpy path's 8192-shingle blocks
    off = np.concatenate(([0], np.cumsum(counts)))
    h = rng.integers(0, 1 << 32, off[-1], dtype=np.uint32)
    perms = Permutations(128, 3, used=used)
    got = signatures(h, off, perms)
    assert got.dtype == np.uint32 and got.shape == (300, used)
    assert np.array_equal(got, _signatures_numpy(h, off, perms))
    assert (got[0] == perms.empty_value).all()


def test_signatures_of_real_text_both_engines():
    h, off = shingle_hashes(TEXTS, 5)
    perms = Permutations(128, 1)
    assert np.array_equal(signatures(h, off, perms), _signatures_numpy(h, off, perms))
