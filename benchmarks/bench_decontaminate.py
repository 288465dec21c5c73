"""Decontamination recall and speed: benchmark items planted in a web-like corpus, verbatim or lightly edited.

Eval items are real text none of the project's authors wrote: the first paragraph (≥ 20 words) of the
docstrings of the Python standard library's modules, functions and classes. The corpus is
benchmarks/webgen.py's web-like mix; 2% of its documents get one item planted in the middle of
their text — half verbatim, half lightly edited (case changed, punctuation dropped, one word
replaced). Recall = planted documents removed / planted; false positives = clean documents
removed; docs/s per core = documents over the operator's CPU seconds (one process; building the
n-gram index excluded and reported apart).

Each index runs on the same corpus: ``exact`` (the hash table) and ``bloom`` (a Bloom filter per eval
set). Index bytes are what the built operator holds (tracemalloc, after the eval set is freed); for the
Bloom filter also its bit array. ``--filler N`` adds N eval items of 40 random words (never planted) to
show the index at a larger eval set; the Bloom run reports its manifest entry (lookups, the bound on
documents removed by a false match) and whether it removed the same documents as exact.

Run: ``.venv/bin/python -m benchmarks.bench_decontaminate --docs 20000 [--filler 20000] [--index exact,bloom]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import random
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def stdlib_items(limit: int) -> list[str]:
    """First docstring paragraphs of at least 20 words from standard-library modules and their members."""
    items, seen = [], set()
    names = sorted(
        m.name for m in pkgutil.iter_modules() if m.module_finder and "site-packages" not in str(m.module_finder)
    )
    for name in names:
        if name.startswith("_") or name in {"antigravity", "this", "idlelib", "tkinter", "turtle"}:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        for obj in [mod, *vars(mod).values()]:
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str):
                continue
            para = " ".join(doc.strip().split("\n\n")[0].split())
            if len(para.split()) >= 20 and para not in seen:
                seen.add(para)
                items.append(para)
            if len(items) >= limit:
                return items
    return items


def edit(rng: random.Random, text: str) -> str:
    """A light edit: lower-cased, punctuation dropped, one word replaced."""
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    words[len(words) // 2] = rng.choice(["alpha", "beta", "gamma", "delta"])
    return " ".join(words)


def filler_items(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    """``n`` items of 40 words drawn at random from ``vocab``: eval-set bulk that no document contains."""
    return [" ".join(rng.choice(vocab) for _ in range(40)) for _ in range(n)]


def run_index(index: str, params: dict, docs: list[str], planted: list[int]) -> tuple[dict, set[int]]:
    """Build the operator with ``index`` and run it over ``docs`` in batches of 1,000: its figures and removed docs."""
    from operators.decontaminate import Decontaminate
    from tests.conftest import make_batch

    kw = {"stage": "decontaminate", "index": index, **params}
    if index == "exact":
        kw.pop("false_positive_rate", None)
    tracemalloc.start()
    op = Decontaminate(**kw)
    held = tracemalloc.get_traced_memory()[0]  # what the operator keeps: the eval set itself is freed
    tracemalloc.stop()
    del op
    t0 = time.process_time()
    op = Decontaminate(**kw)
    build = time.process_time() - t0
    removed: set[int] = set()
    t0 = time.process_time()
    for s in range(0, len(docs), 1000):
        out = op(make_batch(docs[s : s + 1000]))
        removed |= {s + k for k, r in enumerate(out.column("reason").to_pylist()) if r}
    cpu = time.process_time() - t0
    hit = len(removed & set(planted))
    result = {
        "recall": round(hit / max(1, len(planted)), 4),
        "planted_found": hit,
        "false_positives": len(removed - set(planted)),
        "docs_per_cpu_s": round(len(docs) / cpu),
        "index_build_cpu_s": round(build, 2),
        "index_bytes_held": held,
    }
    if index == "bloom":
        result["filter_bytes"] = op.index_bytes
        report = Decontaminate.finish_metrics(op.drain_metrics(), {"index": index, **params})
        entry = next(iter(report["sets"].values()))
        result["manifest_entry"] = {k: v for k, v in entry.items() if k != "items_hit"}
    return result, removed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--planted", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--filler", type=int, default=0, help="extra eval items of random words, never planted")
    ap.add_argument("--index", default="exact,bloom", help="indexes to run, comma-separated")
    ap.add_argument("--false-positive-rate", type=float, default=None, help="for bloom (default: the operator's)")
    args = ap.parse_args()

    from benchmarks.webgen import make_doc

    load_before = os.getloadavg()[0]
    rng = random.Random(args.seed)
    items = stdlib_items(args.items)
    vocab = sorted({w for t in items for w in t.split()})
    work = Path(tempfile.mkdtemp(prefix="sluice-decon-"))
    with open(work / "bench.jsonl", "w") as f:
        for t in items + filler_items(random.Random(args.seed + 1), vocab, args.filler):
            f.write(json.dumps({"text": t}) + "\n")
    docs, planted = [], []
    for i in range(args.docs):
        text = make_doc(args.seed, i)
        if rng.random() < args.planted:
            item = rng.choice(items)
            words = text.split(" ")
            cut = len(words) // 2
            text = " ".join([*words[:cut], item if rng.random() < 0.5 else edit(rng, item), *words[cut:]])
            planted.append(i)
        docs.append(text)
    params: dict = {"eval_sets": [str(work / "bench.jsonl")]}
    if args.false_positive_rate is not None:
        params["false_positive_rate"] = args.false_positive_rate
    result: dict = {"docs": len(docs), "eval_items": len(items), "filler_items": args.filler, "planted": len(planted)}
    removed_by: dict[str, set[int]] = {}
    for index in args.index.split(","):
        result[index], removed_by[index] = run_index(index, params, docs, planted)
    if len(removed_by) == 2:
        result["same_removals"] = removed_by["exact"] == removed_by["bloom"]
    result["python"] = sys.version.split()[0]
    result["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))
    for index in removed_by:
        target = "met" if result[index]["recall"] >= 0.99 else "MISSED"
        print(f"{index}: recall target (>= 99% of planted items): {target}")


if __name__ == "__main__":
    main()
