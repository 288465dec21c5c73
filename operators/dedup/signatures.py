"""Shingles, MinHash signatures, LSH band keys and exact Jaccard for whole batches (numpy; numba kernels).

Shingling (defined here once; the operator's docstring points at it):

* Normalisation: Unicode NFC, then lowercase (pyarrow's ``utf8_lower``: utf8proc's
  simple case mapping).
* Words: maximal runs of code points whose Unicode general category is a letter, mark or
  number (L*, M*, N*, from Python's ``unicodedata``); everything else — spaces,
  punctuation, symbols, ``_`` — only separates words, so ``"Hello, World!"`` and
  ``"hello world"`` have the same words.
* Word n-gram shingle: ``n`` consecutive words joined by one space. A document with
  ``0 < k < n`` words has one shingle, its ``k`` words. A document without words has no
  shingles and never takes part in fuzzy dedup.
* Character n-gram shingle (``char_ngram=k``): ``k`` consecutive code points of the words
  joined by single spaces; a shorter text is one shingle.

Shingle hashes (32 bits, what the permutations act on):

* ``sha1``: datasketch's ``sha1_hash32`` of the shingle's UTF-8 bytes, so signatures equal
  ``datasketch.MinHash(num_perm, seed, scheme=…).update_batch(shingles)`` bit for bit.
  It costs one Python-level SHA1 per shingle (see BENCHMARKS.md for what that caps).
* ``xxh3`` (default): no per-shingle Python work. Every word is hashed with ``xxh3_64`` of its
  UTF-8 bytes; a character shingle's items are its code points through ``fmix64(c + M)``. A
  shingle of items h_1..h_k hashes to ``fmix64(h_1·M^(k-1) + … + h_k mod 2^64) >> 32``, where
  M = 0x9E3779B97F4A7C15 and fmix64 is MurmurHash3's 64-bit finalizer. A different, equally
  uniform 32-bit family, so its signatures are not datasketch's values.

Engines. Word shingles and ``affine32`` signatures run as numba kernels (:mod:`.kernels`): one
pass over the normalised UTF-8 bytes, and one over the shingle hashes. The numpy code here —
words found with a code-point lookup table, each distinct word of a batch hashed once after
Arrow dictionary-encodes them, windows combined with array arithmetic — is the definition the
kernels are tested against value for value; character shingles and ``legacy`` signatures use
it directly. Both engines' costs are in BENCHMARKS.md.

Permutations are datasketch's: (a, b) drawn from ``np.random.RandomState(seed)`` exactly as
``MinHash._init_permutations`` draws them. ``affine32`` (datasketch ≥ 2.0's default):
``a·fmix32(h) + b mod 2^32``. ``legacy``: ``((a·h + b) mod 2^64) mod (2^61 − 1)``, keeping
the low 32 bits (numpy's uint64 wrap-around reproduces datasketch's arithmetic).
"""

from __future__ import annotations

import hashlib
import struct
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_MUL = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 8192  # shingles per signature block: keeps the (perm x shingle) temporaries in cache
_WORD_BMP: np.ndarray | None = None


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """datasketch's ``_fmix(hv, 32)``: the MurmurHash3 32-bit finalizer."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _is_word_char(c: int) -> bool:
    return unicodedata.category(chr(c))[0] in "LMN"


def _word_table() -> np.ndarray:
    """True for every BMP code point that is a word character (built once per process)."""
    global _WORD_BMP
    if _WORD_BMP is None:
        _WORD_BMP = np.fromiter((_is_word_char(c) for c in range(0x10000)), dtype=bool, count=0x10000)
    return _WORD_BMP


def _word_mask(cps: np.ndarray) -> np.ndarray:
    """True where a code point belongs to a word (a lookup table for the BMP, Python beyond)."""
    table = _word_table()
    if cps.dtype == np.uint8:
        return table[:256][cps]
    astral = cps > 0xFFFF
    mask = table[np.where(astral, 0, cps)]
    if astral.any():
        uniq = np.unique(cps[astral])
        ok = np.fromiter((_is_word_char(int(c)) for c in uniq), dtype=bool, count=len(uniq))
        mask[astral] = ok[np.searchsorted(uniq, cps[astral])]
    return mask


def _text_array(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    elif not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.string())
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    return pc.fill_null(texts, "")


def _normalise(texts) -> tuple[pa.StringArray, bool]:
    """NFC (documents with a non-ASCII character only), then lowercase; and whether all were ASCII."""
    texts = _text_array(texts)
    ascii_ = pc.string_is_ascii(texts)
    if pc.all(ascii_).as_py() is not False:
        return pc.utf8_lower(texts), True
    mask = pc.invert(ascii_)
    texts = pc.replace_with_mask(texts, mask, pc.utf8_normalize(texts.filter(mask), "NFC"))
    return pc.utf8_lower(texts), False


def _utf8(texts: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array (zero copy) and each value's int64 [start, end) offsets in them."""
    n = len(texts)
    offs = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset : texts.offset + n + 1]
    buf = texts.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, dtype=np.uint8)
    return data, offs.astype(np.int64)


def _astral_words(data: np.ndarray) -> np.ndarray:
    """The code points above the BMP in UTF-8 ``data`` that are word characters, sorted (uint32)."""
    lead = np.flatnonzero(data >= 0xF0)
    lead = lead[lead + 3 < len(data)]
    if lead.size == 0:
        return np.zeros(0, dtype=np.uint32)
    b = [data[lead + k].astype(np.uint32) for k in range(4)]
    cps = np.unique((b[0] & 7) << 18 | (b[1] & 63) << 12 | (b[2] & 63) << 6 | (b[3] & 63))
    return cps[np.fromiter((_is_word_char(int(c)) for c in cps), dtype=bool, count=len(cps))]


def _offsets(counts: np.ndarray) -> np.ndarray:
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return off


class Words:
    """The words of a batch of documents, located in one flat array of code points.

    Attributes:
        cps: all code points of the normalised texts, concatenated (uint8 when all ASCII).
        starts, ends: each word's [start, end) in ``cps``, documents in order.
        counts: words per document.
    """

    def __init__(self, texts) -> None:
        texts, all_ascii = _normalise(texts)
        n = len(texts)
        if all_ascii:
            data, offs = _utf8(texts)
            self.cps = data[offs[0] : offs[-1]]
            doc_off = offs - offs[0]
        else:
            self.cps = np.frombuffer("".join(texts.to_pylist()).encode("utf-32-le"), dtype=np.uint32)
            doc_off = _offsets(pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
        w = _word_mask(self.cps)
        m = len(w)
        before = np.zeros(m, dtype=bool)
        after = np.zeros(m, dtype=bool)
        before[1:] = w[:-1]
        after[:-1] = w[1:]
        inner = doc_off[1:-1]
        before[inner[inner < m]] = False  # a word never spans two documents
        after[inner[(inner > 0) & (inner <= m)] - 1] = False
        self.starts = np.flatnonzero(w & ~before)
        self.ends = np.flatnonzero(w & ~after) + 1
        doc = np.searchsorted(doc_off, self.starts, side="right") - 1
        self.counts = np.bincount(doc, minlength=n).astype(np.int64)
        self._w = w

    def _chars(self) -> tuple[np.ndarray, np.ndarray]:
        """Code points of the words only, and each word's offset into them."""
        lens = self.ends - self.starts
        return self.cps[self._w], _offsets(lens)

    def arrow(self) -> pa.StringArray:
        """All words as one Arrow string array, built from the code points without Python strings."""
        chars, off = self._chars()
        if chars.dtype == np.uint8:
            data, byte_off = chars, off
        else:  # UTF-8 widths of the code points give the byte offsets of the words
            width = 1 + (chars >= 0x80) + (chars >= 0x800) + (chars >= 0x10000)
            data = np.frombuffer(chars.astype("<u4").tobytes().decode("utf-32-le").encode("utf-8"), np.uint8)
            byte_off = _offsets(width.astype(np.int64))[off]
        if byte_off[-1] >= 2**31:
            raise ValueError("a batch has more than 2 GiB of words; use smaller batches")
        return pa.StringArray.from_buffers(
            len(off) - 1, pa.py_buffer(byte_off.astype(np.int32)), pa.py_buffer(np.ascontiguousarray(data))
        )

    def hashes(self) -> np.ndarray:
        """``xxh3_64`` of every word's UTF-8 bytes; each distinct word of the batch is hashed once."""
        import xxhash

        if self.starts.size == 0:
            return np.zeros(0, dtype=np.uint64)
        enc = pc.dictionary_encode(self.arrow())
        uniq = pc.cast(enc.dictionary, pa.binary()).to_pylist()
        table = np.fromiter((xxhash.xxh3_64_intdigest(u) for u in uniq), dtype=np.uint64, count=len(uniq))
        return table[enc.indices.to_numpy(zero_copy_only=False)]

    def joined(self) -> tuple[np.ndarray, np.ndarray]:
        """Code points of each document's words joined by single spaces (flat), and per-doc offsets."""
        chars, off = self._chars()
        lens = np.diff(off)
        n_words = len(lens)
        first = np.zeros(n_words, dtype=bool)
        first[_offsets(self.counts)[:-1][self.counts > 0]] = True
        seps = np.cumsum(~first)  # separators among words 0..t (one before every non-first word)
        word = np.repeat(np.arange(n_words), lens)
        out = np.empty(len(chars) + (int(seps[-1]) if n_words else 0), dtype=np.uint32)
        out[np.arange(len(chars)) + seps[word]] = chars
        out[(off[:-1] + seps - 1)[~first]] = 32
        doc_lens = np.bincount(
            np.repeat(np.arange(len(self.counts)), self.counts), weights=lens, minlength=len(self.counts)
        ).astype(np.int64) + np.maximum(self.counts - 1, 0)
        return out, _offsets(doc_lens)

    def strings(self) -> list[list[str]]:
        """Each document's words as Python strings (the reference the hashes are defined on)."""
        words = self.arrow().to_pylist()
        doc = _offsets(self.counts)
        return [words[doc[d] : doc[d + 1]] for d in range(len(self.counts))]


def _windows(counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For sequences of ``counts`` items: each n-gram's first item, its length, and n-grams per sequence."""
    per = np.where(counts >= n, counts - n + 1, (counts > 0).astype(np.int64))
    seq_start = _offsets(counts)[:-1]
    first = np.repeat(seq_start, per) + (np.arange(per.sum()) - np.repeat(_offsets(per)[:-1], per))
    length = np.repeat(np.minimum(counts, n), per)
    return first, length, per


def _combine(item_hashes: np.ndarray, first: np.ndarray, length: np.ndarray, n: int) -> np.ndarray:
    """``fmix64(Σ h_i · M^(len-1-i)) >> 32`` over each window, as uint32."""
    if first.size == 0:
        return np.zeros(0, dtype=np.uint32)
    last = len(item_hashes) - 1
    acc = item_hashes[first].copy()
    for k in range(1, n):
        more = k < length
        nxt = item_hashes[np.minimum(first + k, last)]
        acc = np.where(more, acc * _MUL + nxt, acc)
    return (_fmix64(acc) >> np.uint64(32)).astype(np.uint32)


def shingle_strings(texts, ngram: int = 5, char_ngram: int | None = None) -> list[list[str]]:
    """The shingles of each document as strings (what ``sha1`` hashes; the tests' reference)."""
    out: list[list[str]] = []
    for w in Words(texts).strings():
        if not w:
            out.append([])
        elif char_ngram:
            t, k = " ".join(w), char_ngram
            out.append([t[i : i + k] for i in range(max(len(t) - k + 1, 1))])
        else:
            out.append([" ".join(w[i : i + ngram]) for i in range(max(len(w) - ngram + 1, 1))])
    return out


def sha1_hash32(data: bytes) -> int:
    """datasketch.hashfunc.sha1_hash32, inlined to avoid a call per shingle."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]  # noqa: S324 - datasketch's hash, not security


def shingle_hashes(
    texts, ngram: int = 5, char_ngram: int | None = None, hash: str = "xxh3"
) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every shingle of every document (flat, uint32) and per-document offsets."""
    if hash == "sha1":
        sh = shingle_strings(texts, ngram, char_ngram)
        counts = np.fromiter((len(s) for s in sh), dtype=np.int64, count=len(sh))
        vals = [sha1_hash32(s.encode("utf-8")) for doc in sh for s in doc]
        return np.asarray(vals, dtype=np.uint32), _offsets(counts)
    if hash != "xxh3":
        raise ValueError(f"hash must be 'xxh3' or 'sha1', got {hash!r}")
    if not char_ngram:
        return _word_shingles_kernel(texts, ngram)
    seq, off = Words(texts).joined()
    first, length, per = _windows(np.diff(off), char_ngram)
    return _combine(_fmix64(seq.astype(np.uint64) + _MUL), first, length, char_ngram), _offsets(per)


def _word_shingles_kernel(texts, n: int) -> tuple[np.ndarray, np.ndarray]:
    """xxh3 word-shingle hashes by the numba kernel: one pass over the normalised UTF-8 bytes."""
    from operators.dedup.kernels import word_shingles

    texts, all_ascii = _normalise(texts)
    data, off = _utf8(texts)
    astral = np.zeros(0, dtype=np.uint32) if all_ascii else _astral_words(data[off[0] : off[-1]])
    h, counts = word_shingles(data, off, _word_table().view(np.uint8), astral, n)
    return h, _offsets(counts)


def _word_shingles_numpy(texts, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The same hashes in numpy, from the definition above (the kernel's reference in the tests)."""
    words = Words(texts)
    first, length, per = _windows(words.counts, n)
    return _combine(words.hashes(), first, length, n), _offsets(per)


def unique_sets(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's distinct shingle hashes, sorted ascending (flat values, offsets)."""
    counts = np.diff(offsets)
    doc = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
    keys = np.sort((doc << np.uint64(32)) | hashes.astype(np.uint64))  # one sort; np.unique hashes first
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    vals = (keys & _MAX32).astype(np.uint32)
    return vals, _offsets(np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(counts)))


class Permutations:
    """datasketch's permutation parameters for (num_perm, seed, scheme), truncated to ``used``."""

    def __init__(self, num_perm: int, seed: int, scheme: str = "affine32", used: int | None = None) -> None:
        if scheme not in ("affine32", "legacy"):
            raise ValueError(f"scheme must be 'affine32' or 'legacy', got {scheme!r}")
        gen = np.random.RandomState(seed)
        used = num_perm if used is None else used
        if scheme == "legacy":
            ab = np.array(
                [
                    (gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64))
                    for _ in range(num_perm)
                ],
                dtype=np.uint64,
            ).T
            self.a, self.b = ab[0][:used].copy(), ab[1][:used].copy()
        else:
            a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
            b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
            self.a, self.b = a[:used].copy(), b[:used].copy()
        self.scheme = scheme

    def __len__(self) -> int:
        return len(self.a)

    @property
    def empty_value(self) -> int:
        return (1 << 32) - 1


def signatures(hashes: np.ndarray, offsets: np.ndarray, perms: Permutations) -> np.ndarray:
    """MinHash signatures, shape (docs, len(perms)); a document without shingles is all max values.

    uint32 for ``affine32`` (the numba kernel), uint64 for ``legacy`` (numpy), as datasketch stores them.
    """
    if perms.scheme == "affine32":
        from operators.dedup.kernels import minhash_affine32

        h = np.ascontiguousarray(hashes, dtype=np.uint32)
        return minhash_affine32(h, np.ascontiguousarray(offsets, dtype=np.int64), perms.a, perms.b)
    return _signatures_numpy(hashes, offsets, perms)


def _signatures_numpy(hashes: np.ndarray, offsets: np.ndarray, perms: Permutations) -> np.ndarray:
    """``signatures`` in numpy for either scheme (``legacy``'s path; the kernel's reference in the tests).

    Shingles are processed in blocks of ~8k so the (permutations × shingles) temporary stays in cache.
    """
    counts = np.diff(offsets)
    k = len(perms)
    legacy = perms.scheme == "legacy"
    dtype = np.uint64 if legacy else np.uint32
    out = np.full((k, len(counts)), perms.empty_value, dtype=dtype)
    live = np.flatnonzero(counts > 0)
    if live.size == 0:
        return out.T
    starts = offsets[live]  # non-empty documents, in order: their shingles are contiguous
    ends = offsets[live + 1]
    total = int(ends[-1])
    if legacy:
        a, b = perms.a[:, None], perms.b[:, None]
        hv_all = hashes.astype(np.uint64)
    else:
        a, b = perms.a[:, None], perms.b[:, None]
        hv_all = _fmix32(hashes.astype(np.uint32))
    lo = int(starts[0])
    while lo < total:
        hi = min(lo + _CHUNK, total)
        d0 = int(np.searchsorted(ends, lo, side="right"))
        d1 = int(np.searchsorted(starts, hi, side="left"))  # docs d0..d1-1 overlap [lo, hi)
        seg = np.maximum(starts[d0:d1], lo) - lo
        phv = a * hv_all[lo:hi][None, :]
        phv += b
        if legacy:
            phv %= _MERSENNE
            phv &= _MAX32
        mins = np.minimum.reduceat(phv, seg, axis=1)
        cols = live[d0:d1]
        out[:, cols] = np.minimum(out[:, cols], mins)
        lo = hi
    return np.ascontiguousarray(out.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): a hash of the band index and its ``rows`` values.

    Two documents share a key exactly when the band's values are equal (up to 64-bit hash
    collisions, ~n²/2^65 per band, which verification removes anyway). Returns int64 (docs, bands).
    """
    n = sig.shape[0]
    vals = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    acc = np.broadcast_to(_fmix64(np.arange(1, bands + 1, dtype=np.uint64) * _MUL), (n, bands)).copy()
    for i in range(rows):
        acc = _fmix64((acc ^ vals[:, :, i]) * _MUL)
    return acc.view(np.int64)


def doc_uids(ids) -> np.ndarray:
    """int64 document keys: xxh3_64 of the id's UTF-8 bytes (ids are unique, so keys are too, w.h.p.)."""
    import xxhash

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    raw = pc.cast(ids, pa.binary()).to_pylist() if isinstance(ids, pa.Array) else [i.encode() for i in ids]
    return np.fromiter((xxhash.xxh3_64_intdigest(i) for i in raw), dtype=np.uint64, count=len(raw)).view(np.int64)


def sets_to_binary(vals: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Pack each document's sorted shingle set into one ``large_binary`` value (uint32 little-endian)."""
    byte_off = (offsets * 4).astype(np.int64)
    data = np.ascontiguousarray(vals.astype("<u4")).view(np.uint8)
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(byte_off), pa.py_buffer(data)]
    )


def _binary_sets(arr) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_binary())
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    buf = arr.buffers()[2]
    data = np.frombuffer(buf, dtype="<u4") if buf is not None else np.zeros(0, dtype="<u4")
    base = int(off[0])
    vals = data[base // 4 : int(off[-1]) // 4].astype(np.uint32)
    return vals, (off - base) // 4


def jaccard_binary(sets_a, sets_b) -> np.ndarray:
    """Exact Jaccard of each pair of packed sorted sets (``sets_to_binary``), vectorised.

    Each set's values are tagged with its pair index in the high 32 bits, which makes the
    concatenation of all A-sets one sorted array; one ``searchsorted`` then finds every
    B-value's match.
    """
    va, oa = _binary_sets(sets_a)
    vb, ob = _binary_sets(sets_b)
    la, lb = np.diff(oa), np.diff(ob)
    pair_a = np.repeat(np.arange(len(la), dtype=np.uint64), la)
    pair_b = np.repeat(np.arange(len(lb), dtype=np.uint64), lb)
    ka = (pair_a << np.uint64(32)) | va.astype(np.uint64)
    kb = (pair_b << np.uint64(32)) | vb.astype(np.uint64)
    if ka.size and kb.size:
        pos = np.minimum(np.searchsorted(ka, kb), ka.size - 1)
        hit = ka[pos] == kb
        inter = np.bincount(pair_b[hit].astype(np.int64), minlength=len(la)).astype(np.float64)
    else:
        inter = np.zeros(len(la), dtype=np.float64)
    union = la + lb - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
