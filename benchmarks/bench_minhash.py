"""Fuzzy dedup, side by side: Sluice's minhash_dedup, datatrove's 4-stage MinHash, datasketch and rensa.

Quality mode (default) plants near-duplicate families in a synthetic corpus — documents
copied and mutated word by word at controlled rates (0-6% of words substituted, deleted or
inserted; some variants are mutated from other variants, so chains occur) — and takes as
truth every document that has a partner with exact word-5-gram Jaccard ≥ 0.8 in its
family. The same JSONL files go, in one run and on the same cores, through

* Sluice: ``pipelines.runner.run`` with ``{op: minhash_dedup, threshold: 0.8}`` (read →
  checkpoint → minhash_dedup → shards), Ray started beforehand with ``--cpus`` CPUs; with
  ``--cli`` also the whole ``sluice curate`` command in a fresh process, once on Ray (Python
  and Ray start-up included) and once ``--engine local`` (in process, no Ray);
* datatrove: MinhashDedupSignature → Buckets → Cluster → Filter with its default
  MinhashConfig (5-grams, 14 buckets × 8 hashes, xxhash), ``--cpus`` local workers, run in
  a separate Python that has datatrove (never installed into the project's venv);
* datasketch: one process, ``MinHash.bulk`` (128 permutations, SHA1) and ``MinHashLSH``
  with the same threshold and weights as Sluice (so its own optimiser picks the same
  14 × 9 plan), candidates verified by exact Jaccard, union–find;
* rensa (if installed; a bench-only anchor, ``pip install rensa``): one process,
  ``RMinHash`` signatures (128 slots) and ``RMinHashLSH`` with the band count that divides
  128 and minimises the same weighted error as Sluice's plan (16 × 8); once like the
  datasketch anchor (the bench's shingles, exact verification, union–find), once as rensa's
  own benchmark runs it (its shingling — lowercase, whitespace words, word 5-grams, its
  ``tokenize_to_ngrams`` — and LSH duplicate flags only).

Each system's doc-level precision/recall/F1 counts a document as flagged when the system
put it in a cluster of two or more (kept or removed); docs/s is documents over wall
seconds from reading the JSONL to the decision. Other load on the machine slows all
alike; the JSON records the load average before, during (sampled every second) and after.

Signatures only (quality mode, after the end-to-end runs): the same texts, 128 permutations, docs per
CPU-second (best of ``--rounds``): Sluice's ``shingle_hashes`` + ``signatures`` on Arrow batches of
the operator's block size (the numba kernels, and the numpy reference engine they replaced)
against rensa (its own shingling in Python, then ``RMinHash``: the digest-matrix batch API and one
sketch per document) and datasketch (``MinHash.bulk`` of the bench's shingles, one round).

Scale mode (``--scale N``) writes N synthetic documents (5% near-duplicates) as Parquet,
runs the same recipe and reports wall time, docs/s and the peak memory (sum of PSS) of
the driver and every process it started (Ray's raylet, object store and workers).

Run:
    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install datatrove     # throwaway venv
    .venv/bin/pip install rensa                                               # bench-only anchor
    .venv/bin/python -m benchmarks.bench_minhash --docs 50000 --dt-python /tmp/dtvenv/bin/python --cli
    .venv/bin/python -m benchmarks.bench_minhash --scale 1000000
Results go to benchmarks/results/minhash-*.json (git-ignored) and markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import LoadSampler, PeakMemory, cpu_delta, run_measured, run_script, tree_cpu

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = 0.8
#: per-word edit probabilities of a variant; roughly J = 1.0 … 0.55 against its source
RATES = (0.0, 0.003, 0.006, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.06)
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------------- corpus
def _vocab(rng: np.random.Generator, n: int = 30_000) -> tuple[list[str], np.ndarray]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lens = rng.integers(3, 10, n)
    words = sorted({"".join(rng.choice(letters, k)) for k in lens})
    words = [words[i] for i in rng.permutation(len(words))]
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    return words, p / p.sum()


def _sample(rng: np.random.Generator, p: np.ndarray, size) -> np.ndarray:
    """Word indices drawn from ``p`` (inverse CDF, much faster than ``rng.choice(p=...)`` per document)."""
    return np.minimum(np.searchsorted(np.cumsum(p), rng.random(size)), len(p) - 1)


def _render(words: list[str]) -> str:
    """Words with a full stop every 15th word and a capital after it (punctuation is ignored by all three)."""
    out = []
    for i, w in enumerate(words):
        out.append(w.capitalize() if i % 15 == 0 else w)
        if i % 15 == 14:
            out[-1] += "."
    return " ".join(out) + "."


def _mutate(rng: np.random.Generator, words: list[str], rate: float, vocab: list[str]) -> list[str]:
    """Each word, with probability ``rate``: substituted (60%), deleted (20%) or followed by a new word (20%)."""
    out: list[str] = []
    draws = rng.random(len(words)).tolist()
    for w, r in zip(words, draws):
        if r >= rate:
            out.append(w)
        elif r < rate * 0.6:
            out.append(vocab[rng.integers(len(vocab))])
        elif r < rate * 0.8:
            continue
        else:
            out.extend((w, vocab[rng.integers(len(vocab))]))
    return out


def planted_corpus(n_docs: int, seed: int = 0, family_share: float = 0.18) -> tuple[list[str], list[str], list[int]]:
    """(ids, texts, family of each doc). A share of bases get 1-3 mutated variants."""
    rng = np.random.default_rng(seed)
    vocab, p = _vocab(rng)
    docs: list[tuple[int, list[str]]] = []
    fam = 0
    while len(docs) < n_docs:
        base = [vocab[i] for i in _sample(rng, p, int(rng.integers(250, 550))).tolist()]
        members = [base]
        if rng.random() < family_share:
            for _ in range(int(rng.integers(1, 4))):
                src = members[int(rng.integers(len(members)))] if rng.random() < 0.3 else base
                members.append(_mutate(rng, src, float(rng.choice(RATES)), vocab))
        docs.extend((fam, m) for m in members)
        fam += 1
    docs = docs[:n_docs]
    order = rng.permutation(len(docs))
    ids = [f"d{i:08d}" for i in range(len(docs))]
    return ids, [_render(docs[j][1]) for j in order], [docs[j][0] for j in order]


def _grams(text: str, n: int = 5) -> set[str]:
    w = _WORD.findall(text.lower())
    return {" ".join(w[i : i + n]) for i in range(max(len(w) - n + 1, 1))} if w else set()


class UnionFind:
    """Path-halving union-find over 0..n-1; a union keeps the lower root (a deterministic survivor)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def truth(ids: list[str], texts: list[str], families: list[int]) -> tuple[set[str], int, dict]:
    """Documents with a partner at exact 5-gram Jaccard ≥ THRESHOLD; the ideal removal count; J histogram."""
    by_fam: dict[int, list[int]] = {}
    for i, f in enumerate(families):
        by_fam.setdefault(f, []).append(i)
    flagged: set[str] = set()
    uf = UnionFind(len(ids))
    hist = np.zeros(10, dtype=int)
    for members in by_fam.values():
        if len(members) < 2:
            continue
        sets = {i: _grams(texts[i]) for i in members}
        for a_i, a in enumerate(members):
            for b in members[a_i + 1 :]:
                j = len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b]))
                hist[min(int(j * 10), 9)] += 1
                if j >= THRESHOLD:
                    flagged.update((ids[a], ids[b]))
                    uf.union(a, b)
    roots = [uf.find(i) for i in range(len(ids)) if ids[i] in flagged]
    ideal_removed = len(roots) - len(set(roots))
    return flagged, ideal_removed, {f"{k / 10:.1f}": int(v) for k, v in enumerate(hist)}


def write_jsonl(dirpath: Path, ids: list[str], texts: list[str], files: int) -> list[Path]:
    dirpath.mkdir(parents=True, exist_ok=True)
    paths = []
    per = -(-len(ids) // files)
    for k in range(files):
        path = dirpath / f"part-{k:03d}.jsonl"
        with open(path, "w") as f:
            for i, t in zip(ids[k * per : (k + 1) * per], texts[k * per : (k + 1) * per]):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
        paths.append(path)
    return paths


def score(flagged: set[str], true: set[str]) -> dict:
    tp = len(flagged & true)
    p = tp / len(flagged) if flagged else 1.0
    r = tp / len(true) if true else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


# ---------------------------------------------------------------------- systems
def _run_recipe(input_glob: str, fmt: str, out: Path, stages: str) -> tuple[dict, float, float]:
    from pipelines.recipe import parse_recipe
    from pipelines.runner import run

    recipe = parse_recipe(
        f"""inputs:
  - {{path: "{input_glob}", domain: web, id_field: id, format: {fmt}}}
stages: {stages}
output: {{dir: "{out}", shard_mb: 256}}
"""
    )
    cpu0, t0 = tree_cpu(), time.perf_counter()
    manifest = run(recipe, fresh=True)
    return manifest, time.perf_counter() - t0, cpu_delta(cpu0, tree_cpu())


def run_sluice_io(input_glob: str, fmt: str, out: Path) -> dict:
    """The runner without stages (read → shards): what I/O and Ray cost before any dedup work."""
    manifest, seconds, cpu = _run_recipe(input_glob, fmt, out, "[]")
    return {"seconds": seconds, "cpu_seconds": cpu, "conservation_ok": manifest["conservation"]["ok"]}


def _sluice_result(manifest: dict, out: Path, seconds: float, cpu: float) -> dict:
    """A minhash_dedup run's figures and flagged documents (in a cluster of two or more), read from its outputs."""
    from storage.shards import read_shards

    stage = next(s for s in manifest["stages"] if s["op"] == "minhash_dedup")
    kept = read_shards(str(out / "shards"), columns=["id", "dup_cluster"])
    removed = read_shards(str(out / "removed" / "stage=minhash_dedup"), columns=["id", "dup_cluster"])
    flagged = {
        i
        for t in (kept, removed)
        for i, c in zip(t.column("id").to_pylist(), t.column("dup_cluster").to_pylist())
        if c is not None and c >= 0
    }
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "stage_seconds": stage["seconds"],
        "flagged": flagged,
        "removed": removed.num_rows,
        "report": stage["report"],
        "conservation_ok": manifest["conservation"]["ok"],
        "segments": manifest["segments"],
    }


def run_sluice(input_glob: str, fmt: str, out: Path, extra: str = "") -> dict:
    stages = f"[{{op: minhash_dedup, threshold: {THRESHOLD}{extra}}}]"
    manifest, seconds, cpu = _run_recipe(input_glob, fmt, out, stages)
    return _sluice_result(manifest, out, seconds, cpu)


def run_sluice_cli(input_glob: str, out: Path, engine: str) -> dict:
    """The whole ``sluice curate --engine ENGINE`` in a fresh process: Python and imports, Ray's start and
    shutdown (``ray``) or none (``local``: in process), the run."""
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(
        f"""inputs:
  - {{path: "{input_glob}", domain: web, id_field: id, format: jsonl}}
stages: [{{op: minhash_dedup, threshold: {THRESHOLD}}}]
output: {{dir: "{out}", shard_mb: 256}}
"""
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray with every CPU, as a user gets
    cmd = [str(Path(sys.executable).parent / "sluice"), "curate", str(recipe), "--fresh", "--engine", engine]
    done, wall, cpu = run_measured(cmd, env)
    if done.returncode != 0:
        raise RuntimeError(f"sluice curate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return _sluice_result(json.loads((out / "manifest.json").read_text()), out, wall, cpu)


def run_datasketch(paths: list[Path], num_perm: int = 128) -> dict:
    from datasketch import MinHash, MinHashLSH

    t0, cpu0 = time.perf_counter(), time.process_time()
    ids, texts = _read_jsonl(paths)
    shingles = [_grams(t) for t in texts]
    mhs = MinHash.bulk([[s.encode() for s in sh] for sh in shingles], num_perm=num_perm)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=num_perm, weights=(0.1, 0.9))
    with lsh.insertion_session() as session:
        for i, m in enumerate(mhs):
            if shingles[i]:
                session.insert(i, m)
    uf = UnionFind(len(ids))
    candidates = verified = 0
    for i, m in enumerate(mhs):
        if not shingles[i]:
            continue
        for j in lsh.query(m):
            if j <= i:
                continue
            candidates += 1
            a, b = shingles[i], shingles[j]
            if len(a & b) / len(a | b) >= THRESHOLD:
                verified += 1
                uf.union(i, j)
    roots = [uf.find(i) for i in range(len(ids))]
    sizes: dict[int, int] = {}
    for r in roots:
        sizes[r] = sizes.get(r, 0) + 1
    flagged = {ids[i] for i, r in enumerate(roots) if sizes[r] > 1}
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "flagged": flagged,
        "removed": sum(v - 1 for v in sizes.values()),
        "plan": [lsh.b, lsh.r],
        "candidate_pairs": candidates,
        "verified_pairs": verified,
    }


def rensa_shingles(text: str, n: int = 5) -> list[str]:
    """rensa's own shingling (``tokenize_to_ngrams`` in its benchmarks): lowercase, whitespace words, word n-grams."""
    tokens = text.lower().split()
    if n <= 1 or len(tokens) < n:
        return tokens
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def rensa_bands(num_perm: int) -> int:
    """The band count dividing ``num_perm`` (``RMinHashLSH`` requires it) that minimises Sluice's weighted error."""
    from operators.dedup.lsh_plan import error_integrals

    bands = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    fp, fn = error_integrals(THRESHOLD, bands, [num_perm // b for b in bands])
    return bands[int(np.argmin(0.1 * fp + 0.9 * fn))]


def _read_jsonl(paths: list[Path]) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for path in paths:
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                ids.append(d["id"])
                texts.append(d["text"])
    return ids, texts


def _rensa_inputs(paths: list[Path], num_perm: int, shingler):
    ids, texts = _read_jsonl(paths)
    shingles = [list(shingler(t)) for t in texts]
    live = [i for i, sh in enumerate(shingles) if sh]
    return ids, shingles, live, rensa_bands(num_perm)


def run_rensa(paths: list[Path], num_perm: int = 128) -> dict:
    """rensa like the datasketch anchor (the bench's shingles, so the same sets as the truth's and datasketch's):
    RMinHash → RMinHashLSH → exact Jaccard of the candidates → union–find."""
    from rensa import RMinHash, RMinHashLSH

    t0, cpu0 = time.perf_counter(), time.process_time()
    ids, shingles, live, bands = _rensa_inputs(paths, num_perm, _grams)
    mhs = RMinHash.from_token_sets([shingles[i] for i in live], num_perm=num_perm, seed=1)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=num_perm, num_bands=bands)
    lsh.insert_many(mhs, start_key=0)
    sets = [set(shingles[i]) for i in live]
    uf = UnionFind(len(ids))
    candidates = verified = 0
    for k, m in enumerate(mhs):
        for j in lsh.query(m):
            if j <= k:
                continue
            candidates += 1
            if len(sets[k] & sets[j]) / len(sets[k] | sets[j]) >= THRESHOLD:
                verified += 1
                uf.union(live[k], live[j])
    roots = [uf.find(i) for i in range(len(ids))]
    sizes: dict[int, int] = {}
    for r in roots:
        sizes[r] = sizes.get(r, 0) + 1
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "flagged": {ids[i] for i, r in enumerate(roots) if sizes[r] > 1},
        "removed": sum(v - 1 for v in sizes.values()),
        "plan": [bands, num_perm // bands],
        "candidate_pairs": candidates,
        "verified_pairs": verified,
    }


def run_rensa_flags(paths: list[Path], num_perm: int = 128) -> dict:
    """rensa as its own benchmark runs it: its shingling, a digest matrix and LSH duplicate flags (a shared band).

    Its whitespace words keep punctuation, and the corpus puts a full stop after every 15th word, so an
    inserted or deleted word shifts the stops and changes ~1/3 of the shingles after it: rensa's own
    sets see such pairs at Jaccard ~0.5-0.8 where the bench's ``\\w+`` words see ≥ 0.8.
    """
    from rensa import RMinHash, RMinHashLSH

    t0, cpu0 = time.perf_counter(), time.process_time()
    ids, shingles, live, bands = _rensa_inputs(paths, num_perm, rensa_shingles)
    matrix = RMinHash.digest_matrix_from_token_sets([shingles[i] for i in live], num_perm=num_perm, seed=1)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=num_perm, num_bands=bands)
    flags = lsh.query_duplicate_flags_matrix_one_shot(matrix)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "flagged": {ids[live[k]] for k, dup in enumerate(flags) if dup},
        "removed": None,  # flags say "has a near duplicate", not which one survives
        "plan": [bands, num_perm // bands],
    }


KERNELS = r"""
import json, time
c0 = time.process_time()
from operators.dedup import kernels
from operators.dedup.signatures import Permutations, shingle_hashes, signatures
c1 = time.process_time()
signatures(*shingle_hashes(["one two three four five six"], 5), Permutations(128, 1))
c2 = time.process_time()
hits = sum(sum(getattr(kernels, f).stats.cache_hits.values()) for f in ("word_shingles", "minhash_affine32"))
print("RESULT " + json.dumps({"import_cpu_s": round(c1 - c0, 3), "first_call_cpu_s": round(c2 - c1, 3),
                              "compiled": hits < 2}))
"""


def kernel_cache_warmup() -> dict:
    """Call the numba kernels once in a fresh Python: compiles them into their cache if needed, and times it.

    ``compiled`` says whether this call compiled (the cache was cold: once per machine and version)
    or loaded them; ``first_call_cpu_s`` is what every new process pays on its first batch.
    """
    return run_script(sys.executable, KERNELS, {})


def _best_cpu(fn, rounds: int) -> tuple[float, float]:
    """(best, first) CPU seconds of this process over ``rounds`` calls of ``fn``."""
    times = []
    for _ in range(rounds):
        gc.collect()
        c = time.process_time()
        fn()
        times.append(time.process_time() - c)
    return min(times), times[0]


def signature_throughput(texts: list[str], rounds: int = 3, num_perm: int = 128, datasketch: bool = True) -> dict:
    """Docs per CPU-second of shingling + signatures only: Sluice's engines, rensa, datasketch, on the same texts."""
    import pyarrow as pa

    from operators.dedup import signatures as sg
    from operators.dedup.ray_steps import BLOCK_ROWS

    n = len(texts)
    spans = [(i, min(i + BLOCK_ROWS, n)) for i in range(0, n, BLOCK_ROWS)]
    batches = [pa.array(texts[i:j], pa.string()) for i, j in spans]  # what band_rows gets: Arrow, BLOCK_ROWS docs
    perms = sg.Permutations(num_perm, 1)
    engines = {
        "sluice (numba kernels)": lambda: [sg.signatures(*sg.shingle_hashes(b, 5), perms) for b in batches],
        "sluice numpy engine (before)": lambda: [
            sg._signatures_numpy(*sg._word_shingles_numpy(b, 5), perms) for b in batches
        ],
    }
    if importlib.util.find_spec("rensa"):
        from rensa import RMinHash

        def rensa_matrix():
            for i, j in spans:
                shingles = [rensa_shingles(t) for t in texts[i:j]]
                RMinHash.digest_matrix_from_token_sets(shingles, num_perm=num_perm, seed=1)

        def rensa_objects():
            for t in texts:
                m = RMinHash(num_perm=num_perm, seed=1)
                m.update(rensa_shingles(t))

        engines["rensa digest matrix (batches)"] = rensa_matrix
        engines["rensa RMinHash per document"] = rensa_objects
    out: dict[str, dict] = {}
    for name, fn in engines.items():
        best, first = _best_cpu(fn, rounds)
        out[name] = {"docs_per_cpu_s": round(n / best, 1), "best_cpu_s": round(best, 3), "first_cpu_s": round(first, 3)}
    if datasketch:
        from datasketch import MinHash

        cpu0 = time.process_time()
        MinHash.bulk([[s.encode() for s in _grams(t)] for t in texts], num_perm=num_perm)
        cpu = time.process_time() - cpu0
        out["datasketch MinHash.bulk (1 round)"] = {"docs_per_cpu_s": round(n / cpu, 1), "best_cpu_s": round(cpu, 3)}
    return {"docs": n, "num_perm": num_perm, "batch_docs": BLOCK_ROWS, "rounds": rounds, "engines": out}


DATATROVE = r"""
import glob, gzip, json, sys, time
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
    MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.jsonl import JsonlWriter
import datatrove.utils.hashes.xxhash as dx

# datatrove 0.10 hands str to xxhash, which xxhash >= 4 refuses; encode first (what older xxhash did inside)
def xxhash64(d):
    import xxhash
    return xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)
dx.xxhash64 = xxhash64

a = json.loads(sys.argv[1])
inp, work, workers, files = a["input"], a["work"], a["workers"], a["files"]
cfg = MinhashConfig()  # datatrove's defaults: 5-grams, 14 buckets x 8 hashes, xxhash
t, t0 = {}, time.perf_counter()
def stage(name, pipeline, tasks, w):
    s = time.perf_counter()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=w, logging_dir=f"{work}/logs/{name}").run()
    t[name] = time.perf_counter() - s
stage("signatures", [JsonlReader(inp), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], files, workers)
stage("buckets", [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)],
      cfg.num_buckets, workers)
stage("cluster", [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg,
      save_cluster_id=True)], 1, 1)
stage("filter", [JsonlReader(inp), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
      exclusion_writer=JsonlWriter(f"{work}/removed"), load_cluster_ids=True), JsonlWriter(f"{work}/output")],
      files, workers)
total = time.perf_counter() - t0
flagged, removed = [], 0
for kind in ("output", "removed"):
    for path in glob.glob(f"{work}/{kind}/*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            for line in f:
                d = json.loads(line)
                removed += kind == "removed"
                if d.get("metadata", {}).get("minhash_cluster_id", -1) != -1:
                    flagged.append(d["id"])
print("RESULT " + json.dumps({"seconds": total, "stages": t, "flagged": flagged, "removed": removed,
                              "plan": [cfg.num_buckets, cfg.hashes_per_bucket]}))
"""


def run_datatrove(python: str, input_dir: Path, files: int, workers: int, work: Path) -> dict:
    args = {"input": str(input_dir), "work": str(work), "workers": workers, "files": files}
    res = run_script(python, DATATROVE, args)
    res["flagged"] = set(res["flagged"])
    return res


# ---------------------------------------------------------------------- modes
def _machine() -> dict:
    return {
        "cpus_visible": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


def quality(args) -> dict:
    import ray

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    ids, texts, fams = planted_corpus(args.docs, args.seed)
    true, ideal_removed, jhist = truth(ids, texts, fams)
    paths = write_jsonl(work / "input", ids, texts, args.files)
    result = {"mode": "quality", "docs": len(ids), "threshold": THRESHOLD, "cpus": args.cpus, "machine": _machine()}
    result["truth"] = {"flagged": len(true), "ideal_removed": ideal_removed, "family_pair_jaccard": jhist}
    runs: dict[str, dict] = {}

    load = LoadSampler()
    result["numba_kernels"] = kernel_cache_warmup()  # so no timed run compiles them, and what compiling costs
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    inputs = str(work / "input" / "*.jsonl")
    runs["sluice"] = run_sluice(inputs, "jsonl", work / "sluice")
    baseline = run_sluice_io(inputs, "jsonl", work / "sluice-io")
    runs["sluice, again in the same Ray session"] = run_sluice(inputs, "jsonl", work / "sluice-again")
    ray.shutdown()
    if args.cli:
        runs["sluice curate (CLI, fresh process)"] = run_sluice_cli(inputs, work / "sluice-cli", "ray")
        runs["sluice curate --engine local (in process)"] = run_sluice_cli(inputs, work / "sluice-local", "local")
    if args.dt_python:
        runs["datatrove"] = run_datatrove(args.dt_python, work / "input", args.files, args.cpus, work / "datatrove")
    if not args.skip_datasketch:
        runs["datasketch"] = run_datasketch(paths)
    if importlib.util.find_spec("rensa"):
        runs["rensa + exact verification"] = run_rensa(paths)
        runs["rensa, its shingling, LSH flags only"] = run_rensa_flags(paths)
    if args.rounds:
        result["signatures_only"] = signature_throughput(texts, args.rounds, datasketch=not args.skip_datasketch)
    load.stop()
    for r in runs.values():
        r.update(score(r.pop("flagged"), true))
        r["docs_per_s"] = round(len(ids) / r["seconds"], 1)
        r["docs_per_cpu_s"] = round(len(ids) / r["cpu_seconds"], 1)
        r["seconds"], r["cpu_seconds"] = round(r["seconds"], 2), round(r["cpu_seconds"], 2)
    result["runs"] = runs
    result["sluice_runner_without_stages"] = {
        k: round(v, 2) if isinstance(v, float) else v for k, v in baseline.items()
    }
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"]["load_average_during"] = load.summary()
    for other in ("datatrove", "datasketch", "rensa + exact verification"):
        if other in runs:
            result[f"speedup_vs_{other}"] = {
                k: round(runs["sluice"][k] / runs[other][k], 2) for k in ("docs_per_s", "docs_per_cpu_s")
            }
    return result


def synthetic_parquet(n: int, out: Path, seed: int = 0, per_file: int = 200_000, words: int = 150) -> int:
    """n documents of ``words`` Zipf words; 5% are light mutations (1-2% of words) of earlier ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab, p = _vocab(rng)
    vocab_arr = np.array(vocab, dtype=object)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for k, start in enumerate(range(0, n, per_file)):
        m = min(per_file, n - start)
        idx = _sample(rng, p, (m, words))
        dup = np.flatnonzero(rng.random(m) < 0.05)
        dup = dup[dup > 0]
        src = (rng.random(len(dup)) * dup).astype(np.int64)
        idx[dup] = idx[src]
        flips = rng.random((len(dup), words)) < 0.015
        idx[dup] = np.where(flips, rng.integers(0, len(vocab), (len(dup), words)), idx[dup])
        texts = [" ".join(row) + "." for row in vocab_arr[idx]]
        ids = [f"s{start + i:09d}" for i in range(m)]
        pq.write_table(pa.table({"id": ids, "text": texts}), out / f"part-{k:05d}.parquet", compression="zstd")
        written += m
    return written


def scale(args) -> dict:
    import ray

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    n = synthetic_parquet(args.scale, work / "input")
    gen_s = time.perf_counter() - t0
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    with PeakMemory() as mem:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        run = run_sluice(str(work / "input" / "*.parquet"), "parquet", work / "sluice")
        ray.shutdown()
    run.pop("flagged")
    rep = run["report"]
    return {
        "mode": "scale",
        "docs": n,
        "cpus": args.cpus,
        "machine": {**_machine(), "memory_total_gb": round(_mem_total() / 2**30, 1)},
        "generate_seconds": round(gen_s, 1),
        "seconds": round(run["seconds"], 1),
        "cpu_seconds": round(run["cpu_seconds"], 1),
        "docs_per_s": round(n / run["seconds"], 1),
        "peak_pss_gb": round(mem.peak / 2**30, 2),
        "stage_seconds": run["stage_seconds"],
        "segments": run["segments"],
        "removed": run["removed"],
        "conservation_ok": run["conservation_ok"],
        "report": {
            k: rep[k] for k in ("candidate_pairs", "verified_pairs", "clusters", "duplicates_removed", "seconds")
        },
    }


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def table(result: dict) -> str:
    if result["mode"] == "scale":
        return (
            "| docs | wall s | CPU s | docs/s | peak memory (PSS, GB) | removed | cpus |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {result['docs']:,} | {result['seconds']} | {result['cpu_seconds']} | {result['docs_per_s']:,.0f} "
            f"| {result['peak_pss_gb']} | {result['removed']:,} | {result['cpus']} |"
        )
    rows = [
        "| system | plan (b×r) | docs/s (wall) | docs/CPU-s | wall s | CPU s | precision | recall | F1 "
        f"| removed (ideal {result['truth']['ideal_removed']:,}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        plan = r.get("plan") or [r["report"]["plan"]["bands"], r["report"]["plan"]["rows"]]
        removed = "–" if r["removed"] is None else f"{r['removed']:,}"
        rows.append(
            f"| {name} | {plan[0]}×{plan[1]} | {r['docs_per_s']:,.0f} | {r['docs_per_cpu_s']:,.0f} | {r['seconds']} "
            f"| {r['cpu_seconds']} | {r['precision']} | {r['recall']} | {r['f1']} | {removed} |"
        )
    io = result.get("sluice_runner_without_stages")
    if io:
        n = result["docs"]
        rows.append(
            f"| (sluice runner, no stages) | – | {n / io['seconds']:,.0f} | {n / io['cpu_seconds']:,.0f} "
            f"| {io['seconds']} | {io['cpu_seconds']} | – | – | – | – |"
        )
    sig = result.get("signatures_only")
    if sig:
        rows += [
            "",
            f"Signatures only ({sig['docs']:,} docs, {sig['num_perm']} permutations, shingling included, "
            f"best of {sig['rounds']}):",
            "",
            "| engine | docs/CPU-s | CPU s (best) | CPU s (first round) |",
            "|---|---|---|---|",
        ]
        for name, e in sig["engines"].items():
            rows.append(f"| {name} | {e['docs_per_cpu_s']:,.0f} | {e['best_cpu_s']} | {e.get('first_cpu_s', '–')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=50_000, help="documents in the planted corpus (quality mode)")
    ap.add_argument("--scale", type=int, default=0, help="run the scale mode with this many documents instead")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs for Ray and for datatrove's workers")
    ap.add_argument("--files", type=int, default=4, help="input JSONL files (datatrove's task count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dt-python", default=None, help="a Python with datatrove installed (e.g. /tmp/dtvenv/bin/python)")
    ap.add_argument("--skip-datasketch", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the signatures-only comparison (0: skip it)")
    ap.add_argument(
        "--cli",
        action="store_true",
        help="also time the whole `sluice curate` in a fresh process, on Ray (every CPU) and in process",
    )
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sluice-bench-minhash"))
    args = ap.parse_args(argv)
    result = scale(args) if args.scale else quality(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"minhash-{result['mode']}-{result['docs']}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    load = result["machine"]["load_average"]
    print(f"\n(written to benchmarks/results/{name}; {result['cpus']} CPUs; load average before {load})")


if __name__ == "__main__":
    main()
