"""Deduplication, one family in one place.

- ``exact_dedup`` (:mod:`.exact`): a hash of normalized text across the whole dataset; the lowest id survives.
- ``minhash_dedup`` (:mod:`.minhash`, the operator) runs four steps, each in its own module:
  shingles and signatures (:mod:`.signatures`, datasketch-compatible; numba kernels in :mod:`.kernels`),
  the (bands, rows) plan for a Jaccard threshold (:mod:`.lsh_plan`), LSH bucketing and exact-Jaccard
  verification on Ray Data (:mod:`.ray_steps`), and connected components with a deterministic survivor
  (:mod:`.components`).
"""
