"""Seeded hashing: every random-looking decision of the mixer is a hash of (seed, position).

The sampler (:mod:`mixers.server.sampler`) draws each sequence's domain and shuffles units and
documents this way, and Aioli (:mod:`mixers.algorithms.aioli`) its probe order: no long-lived
random generator exists, so a decision depends only on its key, on any machine and numpy version.
The salts below keep the hash families of different decisions independent.
"""

from __future__ import annotations

import hashlib

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
# salts keep the hash families of different decisions independent: one table, so no two share one
SALT_DRAW, SALT_UNITS, SALT_DOCS = 0xD1, 0x5E, 0xD0  # the sampler: slot domains, unit order, document order
SALT_AIOLI = 0xA1  # Aioli's probe order
SALT_CAP = 0xC4  # the sampler: slots drawn again past an epoch cap


def _mix(x: int) -> int:
    """splitmix64's finaliser on a Python int."""
    x &= M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def key64(*parts: int) -> int:
    """A 64-bit key from integers (any sign, any size)."""
    h = 0
    for p in parts:
        h = _mix(h ^ _mix((p + GOLDEN) & M64))
    return h


def name_key(name: str) -> int:
    """A stable 64-bit key for a name (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def hash_index(key: int, n: int) -> np.ndarray:
    """``n`` independent 64-bit hashes of (key, 0..n-1) as uint64."""
    x = np.arange(n, dtype=np.uint64) + np.uint64(GOLDEN)
    for _ in range(2):  # splitmix64 finaliser, twice: once on the index, once keyed
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        x ^= np.uint64(key)
    return x


def uniforms(key: int, n: int) -> np.ndarray:
    """``n`` floats in [0, 1) that depend only on (key, index)."""
    return (hash_index(key, n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permutation(key: int, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``key`` (stable across numpy versions)."""
    return np.argsort(hash_index(key, n), kind="stable")
