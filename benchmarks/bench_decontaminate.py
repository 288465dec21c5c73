"""Decontamination recall and speed: benchmark items planted in a web-like corpus, verbatim or lightly edited.

Eval items are real text none of the project's authors wrote: the first paragraph (≥ 20 words) of the
docstrings of the Python standard library's modules, functions and classes. The corpus is
benchmarks/webgen.py's web-like mix; 2% of its documents get one item planted in the middle of
their text — half verbatim, half lightly edited (case changed, punctuation dropped, one word
replaced). Recall = planted documents removed / planted; false positives = clean documents
removed; docs/s per core = documents over the operator's CPU seconds (one process; building the
n-gram table excluded and reported apart).

Run: ``.venv/bin/python -m benchmarks.bench_decontaminate --docs 20000``
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import random
import re
import sys
import tempfile
import time
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--planted", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from benchmarks.webgen import make_doc
    from operators.decontaminate import Decontaminate
    from tests.conftest import make_batch

    rng = random.Random(args.seed)
    items = stdlib_items(args.items)
    work = Path(tempfile.mkdtemp(prefix="sluice-decon-"))
    with open(work / "bench.jsonl", "w") as f:
        for t in items:
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
    t0 = time.process_time()
    op = Decontaminate(stage="decontaminate", eval_sets=[str(work / "bench.jsonl")])
    build = time.process_time() - t0
    removed = set()
    t0 = time.process_time()
    for s in range(0, len(docs), 1000):
        out = op(make_batch(docs[s : s + 1000]))
        removed |= {s + k for k, r in enumerate(out.column("reason").to_pylist()) if r}
    cpu = time.process_time() - t0
    hit = len(removed & set(planted))
    result = {
        "docs": len(docs),
        "eval_items": len(items),
        "planted": len(planted),
        "recall": round(hit / max(1, len(planted)), 4),
        "false_positives": len(removed - set(planted)),
        "docs_per_cpu_s": round(len(docs) / cpu),
        "table_build_cpu_s": round(build, 2),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=1))
    target = "met" if result["recall"] >= 0.99 else "MISSED"
    print(f"recall target (>= 99% of planted items): {target}")


if __name__ == "__main__":
    main()
