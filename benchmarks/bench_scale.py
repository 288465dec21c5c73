"""Scale: the demo recipe's heuristics, exact dedup and MinHash dedup over N synthetic documents.

The corpus is benchmarks/webgen.py's web-like mix (articles with page chrome, short snippets,
boilerplate and spam, bullet lists, code, hashtag posts, exact and case/whitespace duplicates)
plus planted near-duplicates: ``--near`` of the documents (default 5%) are an earlier document
with 1% of its words replaced, which minhash_dedup at threshold 0.8 should catch. It is written
once as ``--files`` Parquet parts (generated in parallel; reused by later runs with the same
--docs and --seed). The recipe is pipelines/recipes/demo.yaml's stages up to and including
minhash_dedup, applied to every document (one domain, ``web``; the demo's ``domains:`` limits
dropped), run by ``pipelines.runner.run`` on a local Ray with ``--cpus`` CPUs.

Measured: wall seconds and docs/s from the first read to the written manifest; peak memory as
the summed PSS (and RSS) of this process and every process it started (Ray's GCS, raylet and
workers), sampled every 0.5 s, with the split at the peak; busy seconds per stage (summed over
workers, from the manifest) and wall seconds per segment; rows removed by reason; conservation.

Run:
    .venv/bin/python -m benchmarks.bench_scale                       # 1,000,000 documents
    .venv/bin/python -m benchmarks.bench_scale --docs 20000 --cpus 2
Results: benchmarks/results/scale-<docs>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from benchmarks.measure import Sampler, tree_memory
from benchmarks.webgen import NOUNS, make_doc

RESULTS = Path(__file__).resolve().parent / "results"
DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "recipes" / "demo.yaml"
LAST_STAGE = "minhash_dedup"


# ---------------------------------------------------------------------- corpus
def near_doc(seed: int, i: int, rate: float = 0.01) -> str:
    """An earlier document (within 5,000) with ``rate`` of its words replaced: a planted near-duplicate."""
    rng = random.Random(f"near:{seed}:{i}")
    words = make_doc(seed, rng.randrange(max(0, i - 5000), i)).split(" ")
    for k in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
        words[k] = rng.choice(NOUNS)
    return " ".join(words)


def doc(seed: int, i: int, near: float) -> str:
    """Document ``i``: a planted near-duplicate with probability ``near``, else corpus.make_doc."""
    if i > 0 and random.Random(f"kind:{seed}:{i}").random() < near:
        return near_doc(seed, i)
    return make_doc(seed, i)


def _write_part(args: tuple[Path, int, int, int, float]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, start, stop, seed, near = args
    ids = [f"doc-{i:09d}" for i in range(start, stop)]
    texts = [doc(seed, i, near) for i in range(start, stop)]
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table({"id": ids, "text": texts}), tmp, compression="zstd")
    tmp.replace(path)
    return stop - start


def write_corpus(dest: Path, n: int, files: int, seed: int, near: float, workers: int) -> float:
    """Write the corpus as ``files`` Parquet parts under ``dest`` (skipped if complete); return seconds."""
    if (dest / "_DONE").exists():
        return 0.0
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    bounds = [(n * k // files, n * (k + 1) // files) for k in range(files)]
    jobs = [(dest / f"part-{k:05d}.parquet", a, b, seed, near) for k, (a, b) in enumerate(bounds) if b > a]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_part, jobs))
    assert written == n
    (dest / "_DONE").write_text(str(n))
    return time.perf_counter() - t0


def recipe_text(input_glob: str, out: Path) -> str:
    """demo.yaml's stages up to minhash_dedup, for every document, over ``input_glob``."""
    demo = yaml.safe_load(DEMO.read_text())
    stages = []
    for st in demo["stages"]:
        stages.append({k: v for k, v in st.items() if k != "domains"})
        if st["op"] == LAST_STAGE:
            break
    return yaml.safe_dump(
        {
            "inputs": [{"path": input_glob, "domain": "web", "id_field": "id", "format": "parquet"}],
            "stages": stages,
            "output": {"dir": str(out), "shard_mb": 256},
        },
        sort_keys=False,
    )


# ---------------------------------------------------------------------- memory
class MemorySampler(Sampler):
    """Peak summed PSS and RSS of this process and all its descendants, with the split at the PSS peak."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.peak_pss = 0
        self.peak_rss = 0
        self.at_peak: dict[str, int] = {}

    @staticmethod
    def _kind(name: str, cmd: str) -> str:
        if "gcs_server" in name or "raylet" in name:
            return "ray_services"
        if "ray::" in name or "default_worker" in cmd or "ray::" in cmd:
            return "ray_workers"
        return "driver_and_other"

    def sample(self) -> None:
        import psutil

        me = os.getpid()
        pss = rss = 0
        split: dict[str, int] = {}
        for p, mem in tree_memory():
            try:
                kind = "driver_and_other" if p.pid == me else self._kind(p.name(), " ".join(p.cmdline()[:2]))
            except psutil.Error:  # gone meanwhile
                continue
            value = getattr(mem, "pss", mem.rss)
            pss += value
            rss += mem.rss
            split[kind] = split.get(kind, 0) + value
        self.peak_rss = max(self.peak_rss, rss)
        if pss > self.peak_pss:
            self.peak_pss, self.at_peak = pss, split


# ---------------------------------------------------------------------- the run
def bench(args: argparse.Namespace) -> dict:
    import ray

    from pipelines.recipe import parse_recipe
    from pipelines.runner import run

    work = Path(args.work)
    corpus = work / f"input-{args.docs}-{args.seed}-{args.near:g}"
    gen_s = write_corpus(corpus, args.docs, args.files, args.seed, args.near, args.cpus)
    text = recipe_text(str(corpus / "*.parquet"), work / "run")
    recipe = parse_recipe(text)
    load_before = [round(x, 2) for x in os.getloadavg()]
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    with MemorySampler() as mem:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        t0 = time.perf_counter()
        manifest = run(recipe, fresh=True, recipe_text=text)
        seconds = time.perf_counter() - t0
        mem.sample()
        ray.shutdown()
    c = manifest["conservation"]
    stages = [
        {
            "stage": s["stage"],
            "rows_in": s["rows_in"],
            "rows_out": s["rows_out"],
            "busy_seconds": s["seconds"],
            "docs_per_busy_s": round(s["rows_in"] / s["seconds"], 1) if s["seconds"] else None,
            "removed": s["removed"],
        }
        for s in manifest["stages"]
    ]
    minhash = next((s.get("report") or {} for s in manifest["stages"] if s["op"] == LAST_STAGE), {})
    return {
        "benchmark": "scale",
        "docs": args.docs,
        "near_duplicate_share": args.near,
        "cpus": args.cpus,
        "command": "python -m benchmarks.bench_scale " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus_visible": os.cpu_count(),
            "memory_total_gb": round(_mem_total() / 2**30, 1),
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        "generate_seconds": round(gen_s, 1),
        "input_bytes": sum(p.stat().st_size for p in corpus.glob("*.parquet")),
        "seconds": round(seconds, 2),
        "docs_per_s": round(args.docs / seconds, 1),
        "peak_pss_gb": round(mem.peak_pss / 2**30, 3),
        "peak_rss_gb": round(mem.peak_rss / 2**30, 3),
        "pss_at_peak_gb": {k: round(v / 2**30, 3) for k, v in sorted(mem.at_peak.items())},
        "stages": stages,
        "segments": manifest["segments"],
        "kept": c["kept"],
        "removed": c["removed"],
        "conservation_ok": c["ok"],
        "conservation": c["message"],
        "minhash": {k: minhash.get(k) for k in ("candidate_pairs", "verified_pairs", "clusters", "duplicates_removed")},
        "recipe": text,
    }


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def table(r: dict) -> str:
    """Markdown: the headline row, then busy seconds per stage."""
    head = (
        "| docs | wall s | docs/s | peak PSS (GB) | peak RSS (GB) | kept | removed | conservation | cpus |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|\n"
        f"| {r['docs']:,} | {r['seconds']:,} | {r['docs_per_s']:,.0f} | {r['peak_pss_gb']} | {r['peak_rss_gb']} "
        f"| {r['kept']:,} | {r['removed']:,} | {'ok' if r['conservation_ok'] else 'BROKEN'} | {r['cpus']} |"
    )
    rows = ["| stage | docs in | removed | busy s | docs per busy s |", "|---|---:|---:|---:|---:|"]
    for s in r["stages"]:
        busy = "" if s["busy_seconds"] is None else f"{s['busy_seconds']:,}"
        rate = "" if s["docs_per_busy_s"] is None else f"{s['docs_per_busy_s']:,.0f}"
        rows.append(f"| {s['stage']} | {s['rows_in']:,} | {s['rows_in'] - s['rows_out']:,} | {busy} | {rate} |")
    return head + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000, help="synthetic documents")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for Ray and for generating the corpus")
    ap.add_argument("--files", type=int, default=0, help="Parquet parts (default: one per 50,000 documents, >= 4)")
    ap.add_argument("--near", type=float, default=0.05, help="share of planted near-duplicates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sluice-bench-scale"))
    args = ap.parse_args(argv)
    if args.docs < 1:
        ap.error(f"--docs must be >= 1, got {args.docs}")
    if not 0 <= args.near < 1:
        ap.error(f"--near must be in [0, 1), got {args.near}")
    args.files = args.files or max(4, -(-args.docs // 50_000))
    result = bench(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"scale-{result['docs']}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    print(
        f"\n(written to benchmarks/results/{name}; {result['cpus']} CPUs; corpus generated in "
        f"{result['generate_seconds']} s; load average before {result['machine']['load_average_before']})"
    )


if __name__ == "__main__":
    main()
