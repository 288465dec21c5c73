"""Numba kernels for the xxh3 word-shingle hashes and ``affine32`` signatures of :mod:`.signatures`.

They compute exactly the numpy definitions there (tests/operators/dedup/test_kernels.py pins
them value for value), in one pass over the batch's UTF-8 bytes instead of a dozen array
passes and an Arrow dictionary of every word:

* ``word_shingles``: decode each document's normalised UTF-8, find the words with the same
  code-point table, hash every word with XXH3-64 (seed 0, the default secret; the reference
  algorithm, checked against the ``xxhash`` package for every length class) and combine
  each window of ``n`` word hashes as ``fmix64(h_1·M^(n-1) + … + h_n) >> 32``.
* ``minhash_affine32``: ``min over shingles of a·fmix32(h) + b mod 2^32`` per permutation,
  one document's row of minima kept in L1 while its shingles stream by (LLVM vectorises
  the permutation loop).

Compiled with ``cache=True`` (next to this file, or in ``NUMBA_CACHE_DIR``), so a process
loads machine code instead of compiling; BENCHMARKS.md has the import, compile and load costs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U = np.uint64
_M32 = _U(0xFFFFFFFF)
_P32_1, _P32_2, _P32_3 = _U(0x9E3779B1), _U(0x85EBCA77), _U(0xC2B2AE3D)
_P64_1, _P64_2, _P64_3 = _U(0x9E3779B185EBCA87), _U(0xC2B2AE3D27D4EB4F), _U(0x165667B19E3779F9)
_P64_4, _P64_5 = _U(0x85EBCA77C2B2AE63), _U(0x27D4EB2F165667C5)
_PMX1, _PMX2 = _U(0x165667919E3779F9), _U(0x9FB21C651E98DF25)
_MUL = _U(0x9E3779B97F4A7C15)  # the shingle combine's multiplier (signatures._MUL)
_SECRET = np.frombuffer(
    bytes.fromhex(
        "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671fcb79e64eccc0e578825ad07dccff7221"
        "b8084674f743248ee03590e6813a264c3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
        "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364eac5ac8334d3ebc3c581a0fffa1363eb"
        "170ddd51b7f0da49d316552629d4689e2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
    ),
    dtype=np.uint8,
)


@njit
def _r64(b, p):
    q = _U(p)  # an unsigned index: no negative-index wrap-around, so LLVM merges the byte loads
    return (
        _U(b[q])
        | (_U(b[q + _U(1)]) << _U(8))
        | (_U(b[q + _U(2)]) << _U(16))
        | (_U(b[q + _U(3)]) << _U(24))
        | (_U(b[q + _U(4)]) << _U(32))
        | (_U(b[q + _U(5)]) << _U(40))
        | (_U(b[q + _U(6)]) << _U(48))
        | (_U(b[q + _U(7)]) << _U(56))
    )


@njit
def _r32(b, p):
    q = _U(p)
    return _U(b[q]) | (_U(b[q + _U(1)]) << _U(8)) | (_U(b[q + _U(2)]) << _U(16)) | (_U(b[q + _U(3)]) << _U(24))


@njit
def _swap64(x):
    r = _U(0)
    for _ in range(8):
        r = (r << _U(8)) | (x & _U(0xFF))
        x >>= _U(8)
    return r


@njit
def _fold(a, b):
    """The 128-bit product a·b folded to 64 bits (low half xor high half)."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> _U(32), b & _M32, b >> _U(32)
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> _U(32)) + (hi_lo & _M32) + lo_hi
    upper = (hi_lo >> _U(32)) + (cross >> _U(32)) + hi_hi
    lower = (cross << _U(32)) | (lo_lo & _M32)
    return lower ^ upper


@njit
def _avalanche(h):
    h ^= h >> _U(37)
    h *= _PMX1
    return h ^ (h >> _U(32))


@njit
def _xxh64_avalanche(h):
    h ^= h >> _U(33)
    h *= _P64_2
    h ^= h >> _U(29)
    h *= _P64_3
    return h ^ (h >> _U(32))


@njit
def _mix16(b, p, s):
    return _fold(_r64(b, p) ^ _r64(_SECRET, s), _r64(b, p + 8) ^ _r64(_SECRET, s + 8))


@njit
def _xxh3_long(b, p, n):
    acc = np.empty(8, np.uint64)
    acc[0], acc[1], acc[2], acc[3] = _P32_3, _P64_1, _P64_2, _P64_3
    acc[4], acc[5], acc[6], acc[7] = _P64_4, _P32_2, _P64_5, _P32_1
    blocks = (n - 1) // 1024  # 16 stripes of 64 bytes per block with the 192-byte secret
    for blk in range(blocks + 1):
        stripes = 16 if blk < blocks else ((n - 1) - 1024 * blocks) // 64
        for s in range(stripes):
            _accumulate(acc, b, p + blk * 1024 + s * 64, s * 8)
        if blk < blocks:
            for i in range(8):
                a = acc[i]
                a ^= a >> _U(47)
                a ^= _r64(_SECRET, 128 + 8 * i)
                acc[i] = a * _P32_1
    _accumulate(acc, b, p + n - 64, 121)
    h = _U(n) * _P64_1
    for i in range(4):
        h += _fold(acc[2 * i] ^ _r64(_SECRET, 11 + 16 * i), acc[2 * i + 1] ^ _r64(_SECRET, 19 + 16 * i))
    return _avalanche(h)


@njit
def _accumulate(acc, b, p, s):
    for i in range(8):
        v = _r64(b, p + 8 * i)
        k = v ^ _r64(_SECRET, s + 8 * i)
        acc[i ^ 1] += v
        acc[i] += (k & _M32) * (k >> _U(32))


@njit(cache=True)
def xxh3_64(b, p, n):
    """XXH3-64 (seed 0, default secret) of ``b[p:p+n]``, as ``xxhash.xxh3_64_intdigest``."""
    if n == 0:
        return _xxh64_avalanche(_r64(_SECRET, 56) ^ _r64(_SECRET, 64))
    if n <= 3:
        c = (_U(b[p]) << _U(16)) | (_U(b[p + (n >> 1)]) << _U(24)) | _U(b[p + n - 1]) | (_U(n) << _U(8))
        return _xxh64_avalanche(c ^ (_r32(_SECRET, 0) ^ _r32(_SECRET, 4)))
    if n <= 8:
        x = (_r32(b, p + n - 4) + (_r32(b, p) << _U(32))) ^ (_r64(_SECRET, 8) ^ _r64(_SECRET, 16))
        x ^= ((x << _U(49)) | (x >> _U(15))) ^ ((x << _U(24)) | (x >> _U(40)))
        x *= _PMX2
        x ^= (x >> _U(35)) + _U(n)
        x *= _PMX2
        return x ^ (x >> _U(28))
    if n <= 16:
        lo = _r64(b, p) ^ (_r64(_SECRET, 24) ^ _r64(_SECRET, 32))
        hi = _r64(b, p + n - 8) ^ (_r64(_SECRET, 40) ^ _r64(_SECRET, 48))
        return _avalanche(_U(n) + _swap64(lo) + hi + _fold(lo, hi))
    if n <= 128:
        h = _U(n) * _P64_1
        if n > 32:
            if n > 64:
                if n > 96:
                    h += _mix16(b, p + 48, 96) + _mix16(b, p + n - 64, 112)
                h += _mix16(b, p + 32, 64) + _mix16(b, p + n - 48, 80)
            h += _mix16(b, p + 16, 32) + _mix16(b, p + n - 32, 48)
        h += _mix16(b, p, 0) + _mix16(b, p + n - 16, 16)
        return _avalanche(h)
    if n <= 240:
        h = _U(n) * _P64_1
        for i in range(8):
            h += _mix16(b, p + 16 * i, 16 * i)
        end = _mix16(b, p + n - 16, 119)
        h = _avalanche(h)
        for i in range(8, n // 16):
            end += _mix16(b, p + 16 * i, 16 * (i - 8) + 3)
        return _avalanche(h + end)
    return _xxh3_long(b, p, n)


@njit
def _fmix64(h):
    h ^= h >> _U(33)
    h *= _U(0xFF51AFD7ED558CCD)
    h ^= h >> _U(33)
    h *= _U(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U(33))


@njit
def _in_sorted(values, x):
    """Whether ``x`` is in the sorted array ``values`` (a call, kept out of the byte loop's fast path)."""
    i = np.searchsorted(values, x)
    return i < len(values) and values[i] == x


@njit(cache=True)
def word_shingles(data, doc_off, table, astral, n):
    """Shingle hashes (uint32, flat) and shingles per document of a normalised UTF-8 batch.

    Args:
        data: the batch's UTF-8 bytes (NFC, lowercased).
        doc_off: int64 byte offsets of the documents in ``data`` (documents + 1).
        table: uint8 per BMP code point, 1 for a word character (letter, mark, number).
        astral: sorted uint32 code points above the BMP that are word characters.
        n: words per shingle.
    """
    docs = len(doc_off) - 1
    out = np.empty((doc_off[docs] - doc_off[0] + 1) // 2 + docs, np.uint32)
    counts = np.zeros(docs, np.int64)
    ring = np.empty(n, np.uint64)
    pos = 0
    for d in range(docs):
        i, end, words, start, slot = doc_off[d], doc_off[d + 1], 0, -1, 0
        while True:
            if i < end:
                c, step = np.int64(data[i]), 1
                if c >= 0xC0:  # a multi-byte sequence (the data is valid UTF-8; a cut one is not a word)
                    step = 2 if c < 0xE0 else (3 if c < 0xF0 else 4)
                    if i + step > end:
                        c, step = 0, end - i
                    elif step == 2:
                        c = (c & 31) << 6 | data[i + 1] & 63
                    elif step == 3:
                        c = (c & 15) << 12 | (data[i + 1] & 63) << 6 | data[i + 2] & 63
                    else:
                        c = (c & 7) << 18 | (data[i + 1] & 63) << 12 | (data[i + 2] & 63) << 6 | data[i + 3] & 63
                inside = table[c] != 0 if c < 0x10000 else _in_sorted(astral, c)
            else:
                inside, step = False, 0
            if inside and start < 0:
                start = i
            elif not inside and start >= 0:
                ring[slot] = xxh3_64(data, start, i - start)
                slot = slot + 1 if slot + 1 < n else 0  # after n words, ring[slot] is the oldest of the last n
                words += 1
                start = -1
                if words >= n:
                    j = slot
                    acc = _U(0)
                    for _ in range(n):
                        acc = acc * _MUL + ring[j]
                        j = j + 1 if j + 1 < n else 0
                    out[pos] = np.uint32(_fmix64(acc) >> _U(32))
                    pos += 1
            if i >= end:
                break
            i += step
        if 0 < words < n:  # fewer words than n: one shingle of all of them
            acc = _U(0)
            for k in range(words):
                acc = acc * _MUL + ring[k]
            out[pos] = np.uint32(_fmix64(acc) >> _U(32))
            pos += 1
        counts[d] = max(words - n + 1, 1) if words else 0
    return out[:pos].copy(), counts


@njit(cache=True)
def minhash_affine32(hashes, offsets, a, b):
    """Signatures (documents × permutations, uint32): min over a document's shingles of a·fmix32(h) + b."""
    docs, k = len(offsets) - 1, len(a)
    out = np.full((docs, k), np.uint32(0xFFFFFFFF), np.uint32)
    row = np.empty(k, np.uint32)
    for d in range(docs):
        row[:] = np.uint32(0xFFFFFFFF)
        for t in range(offsets[d], offsets[d + 1]):
            h = _U(hashes[t])
            h ^= h >> _U(16)
            h = (h * _U(0x85EBCA6B)) & _M32
            h ^= h >> _U(13)
            h = (h * _U(0xC2B2AE35)) & _M32
            h ^= h >> _U(16)
            for j in range(k):
                v = np.uint32((a[j] * h + b[j]) & _M32)
                if v < row[j]:
                    row[j] = v
        out[d] = row
    return out
