"""Does Sluice's curation make a better model at the same number of tokens, on real text?

The corpus is :mod:`benchmarks.effect_data`: four domains of Debian documentation (the Linux
kernel's reST docs, the Python 3.11 manuals' reST sources, the PostgreSQL 15 manual, the GCIDE
dictionary) with crawl-like junk planted at about half of the raw tokens (exact and near
duplicates, boilerplate, keyword spam, shuffled-word and character-noise documents), a clean
eval set held out by source file, and a trusted reference sample (also held out by file).

Three runs are built with the real commands, in this order:

* ``raw``     — every document, tokenized (``tokenize``, ``split``);
* ``oracle``  — only the clean documents (what perfect curation would keep);
* ``curated`` — ``sluice train-classifier`` (fastText, DCLM recipe: half of the reference as
  positives, a random raw sample as negatives), then ``sluice calibrate`` on the other half of the
  reference (``--keep 0.95``) of a recipe with exact and MinHash dedup, the Gopher and FineWeb
  rules, the classifier threshold and a SmolLM2 perplexity cutoff; then ``sluice curate``.

Then ``sluice ablate`` trains the reference tiny GPT on each run through the mixer server
(stratified mixer, same steps × batch × sequence length for all, 3 seeds) and scores every
(variant, seed) on the same eval tokens. The data-constrained regime: a few epochs over a
bounded corpus, as when a team trains past one pass over the data it has.

Run::

    python -m benchmarks.bench_effect --work /tmp/effect              # data, runs, ablation, summary
    python -m benchmarks.bench_effect --work /tmp/effect --steps 200 --seeds 0   # a smoke run

Writes ``WORK/bench_effect.json`` and prints the markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import yaml

from benchmarks.effect_data import DOMAINS, build, fetch_debs

BIN = Path(sys.executable).parent
MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 128, "lr": 0.003, "compact_vocab": 4096}
TOKENIZE = [{"op": "tokenize", "tokenizer": "packaged:smollm2-135m"}, {"op": "split", "holdout_fraction": 0.01}]
CURATION = [
    {"op": "normalize"},
    {"op": "exact_dedup"},
    {"op": "minhash_dedup", "threshold": 0.6},
    {"op": "gopher_quality"},
    {"op": "gopher_repetition"},
    {"op": "fineweb_quality"},
    # thresholds below are placeholders: `sluice calibrate` sets them per domain on the reference
    {"op": "quality_classifier", "kind": "fasttext", "model": "QUALITY", "threshold": 0.5},
    {"op": "perplexity", "model": "packaged:smollm2-135m", "max_tokens": 256, "max_ppl": 1000.0},
]


def sh(*args: str, log: list[str]) -> None:
    """Run a Sluice command as a user would, and record it."""
    cmd = [str(BIN / "sluice"), *args]
    log.append(shlex.join(["sluice", *args]))
    print("$", log[-1], flush=True)
    subprocess.run(cmd, check=True)


def recipe(work: Path, name: str, pool: str, stages: list[dict]) -> Path:
    data = {
        "inputs": [{"path": str(work / "data" / pool / f"{d}.jsonl"), "domain": d, "id_field": "id"} for d in DOMAINS],
        "stages": stages,
        "output": {"dir": str(work / "runs" / name)},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=140))
    return path


def classifier_files(work: Path, seed: int) -> tuple[Path, Path, list[Path]]:
    """Positives: even reference documents; negatives: twice as many raw documents at random;
    odd reference documents (never seen by the classifier) are written per domain for calibration."""
    rng = random.Random(seed)
    pos, neg, cal = work / "classifier_pos.jsonl", work / "classifier_neg.jsonl", []
    with pos.open("w") as fp, neg.open("w") as fn:
        for d in DOMAINS:
            ref = [json.loads(x) for x in (work / "data/reference" / f"{d}.jsonl").open()]
            raw = [json.loads(x) for x in (work / "data/raw" / f"{d}.jsonl").open()]
            for r in ref[::2]:
                fp.write(json.dumps({"text": r["text"]}) + "\n")
            for r in rng.sample(raw, min(len(raw), 2 * len(ref[::2]))):
                fn.write(json.dumps({"text": r["text"]}) + "\n")
            cal.append(work / f"calibration_{d}.jsonl")
            cal[-1].write_text("".join(json.dumps(r) + "\n" for r in ref[1::2]))
    return pos, neg, cal


def kinds_kept(work: Path) -> dict[str, dict[str, float]]:
    """Per run and planted kind: the share of documents kept (ids map back to the data's ``kind``)."""
    con = duckdb.connect()
    raw_glob = str(work / "data/raw/*.jsonl")
    con.execute(f"CREATE VIEW truth AS SELECT id, kind FROM read_json_auto('{raw_glob}')")
    out: dict[str, dict[str, float]] = {}
    for run in ("raw", "oracle", "curated"):
        shards = str(work / "runs" / run / "shards/**/*.parquet")
        rows = con.execute(
            f"SELECT t.kind, count(k.id)::DOUBLE / count(*) FROM truth t "
            f"LEFT JOIN (SELECT id FROM read_parquet('{shards}', hive_partitioning=true)) k USING (id) "
            "GROUP BY t.kind ORDER BY t.kind"
        ).fetchall()
        out[run] = {k: round(v, 4) for k, v in rows}
    return out


def summarize(results: dict) -> dict:
    """Per-seed deltas of the mean eval loss vs raw, the share of the oracle's gain curated recovers, the targets."""
    delta = {v: results["variants"][v]["delta_vs_baseline"]["mean"]["per_seed"] for v in ("curated", "oracle")}
    gain_cur, gain_orc = statistics.mean(delta["curated"]), statistics.mean(delta["oracle"])
    recovery = gain_cur / gain_orc if gain_orc < 0 else float("nan")
    return {
        "delta_curated_vs_raw": delta["curated"],
        "delta_oracle_vs_raw": delta["oracle"],
        "recovery_of_oracle_gain": round(recovery, 3),
        "target_curated_beats_raw_every_seed": all(x < 0 for x in delta["curated"]),
        "target_recovers_60pct_of_oracle": recovery >= 0.6,
        "oracle_gain_exceeds_seed_spread": -gain_orc > 2 * statistics.pstdev(delta["oracle"]),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="data, runs and results go here")
    p.add_argument("--debs", type=Path, default=None, help="where the Debian packages are (default WORK/debian)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--keep", type=float, default=0.95, help="share of the reference calibration keeps")
    a = p.parse_args(argv)
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    t0 = time.time()

    if not (work / "data/stats.json").exists():
        build(fetch_debs(a.debs or work / "debian"), work / "data")
    stats = json.loads((work / "data/stats.json").read_text())

    pos, neg, cal = classifier_files(work, 0)
    quality = work / "quality.bin"
    if not quality.exists():
        sh(
            "train-classifier",
            "--positive",
            str(pos),
            "--negative",
            str(neg),
            "--epoch",
            "50",
            "-o",
            str(quality),
            log=log,
        )
    stages = [dict(s, model=str(quality)) if s.get("model") == "QUALITY" else s for s in CURATION]
    base = recipe(work, "curated_base", "raw", stages + TOKENIZE)
    curated = work / "curated.yaml"
    if not curated.exists():
        refs = [x for d, f in zip(DOMAINS, cal, strict=True) for x in ("--reference", f"{f}={d}")]
        sh("calibrate", str(base), *refs, "--keep", str(a.keep), "--sample", "200", "-o", str(curated), log=log)
    for name, path in (
        ("raw", recipe(work, "raw", "raw", TOKENIZE)),
        ("oracle", recipe(work, "oracle", "oracle", TOKENIZE)),
        ("curated", curated),
    ):
        sh("curate", str(path), "-o", str(work / "runs" / name), log=log)
    kept = kinds_kept(work)

    spec = {
        "variants": {v: {"run": str(work / "runs" / v)} for v in ("raw", "curated", "oracle")},
        "baseline": "raw",
        "seeds": a.seeds,
        "eval": [str(work / "data/eval" / f"{d}.jsonl") for d in DOMAINS],
        "model": MODEL,
        "budget": {"steps": a.steps, "global_batch": a.global_batch},
    }
    (work / "ablation.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sh("ablate", str(work / "ablation.yaml"), "-o", str(work / "ablation"), log=log)
    results = json.loads((work / "ablation/results.json").read_text())
    summary = summarize(results)
    con = duckdb.connect()
    tokens = {
        run: con.execute(
            f"SELECT sum(n_tokens) FROM read_parquet('{work / 'runs' / run / 'shards/**/*.parquet'}') "
            "WHERE split = 'train'"
        ).fetchone()[0]
        for run in ("raw", "curated", "oracle")
    }
    train_tokens = a.steps * a.global_batch * MODEL["seq_len"]
    out = {
        "commands": log,
        "seconds": round(time.time() - t0, 1),
        "data": stats,
        "train_tokens_per_run": train_tokens,
        "corpus_tokens": tokens,
        "epochs": {run: round(train_tokens / n, 2) for run, n in tokens.items()},
        "kept_share_by_kind": kept,
        "ablation": results,
        "summary": summary,
    }
    (work / "bench_effect.json").write_text(json.dumps(out, indent=1))
    print((work / "ablation/results.md").read_text())
    print(json.dumps({"kept_share_by_kind": kept, "epochs": out["epochs"], **summary}, indent=1))
    return out


if __name__ == "__main__":
    main()
