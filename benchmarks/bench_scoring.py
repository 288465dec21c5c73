"""Model-scoring benchmarks: perplexity throughput vs the bare model, perplexity AUC, fastText docs/s, BETR precision.

All text is real and offline: the Python language reference (``pydoc_data.topics``), the long descriptions
(READMEs) and license files of installed distributions, and standard-library source. Nothing is generated
by the model under test.

1. Perplexity throughput: the ``perplexity`` operator on a pyarrow batch (tokenizing, length-sorting,
   chunked loss, restoring order) against the bare ``model(input_ids, attention_mask, use_cache=False)``
   forward pass (full logits, no loss) on the same token sequences in the same length-sorted batches, in
   one process, interleaved rounds, best of N; tokens/s counts real (non-pad) tokens. An unsorted bare
   forward (input order) is shown for context.
2. Perplexity AUC: clean prose paragraphs against corrupted ones (shuffled words, character noise, keyword
   spam), ROC AUC of ``ppl`` (higher = corrupted), overall and per corruption.
3. fastText scoring docs/s on one core: a DCLM-style classifier (wordNgrams 2, fastText defaults) through
   ``QualityClassifier.predict``.
4. BETR precision: targets are held-out paragraphs of one domain (the language reference); the pool mixes
   four domains equally; the share of that domain among the documents BETR keeps (top 10% of tokens),
   run end to end through the Ray Data runner with the paper's fastText settings except minCount 2 and a
   200k-bucket n-gram table (the sample is only 400 documents).

Run:
    .venv/bin/python -m benchmarks.bench_scoring            # ~5-8 minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.bench_scoring --quick    # smaller sizes, ~3 minutes
Writes benchmarks/results/bench_scoring-<UTC time>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sysconfig
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- real text, offline
def _key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _chunks(text: str, size: int = 900) -> list[str]:
    """Paragraph-aligned chunks of about ``size`` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if cur and len(cur) + len(para) > size:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return [c for c in out if len(c) >= size // 3]


def _prose(par: str) -> str | None:
    """A paragraph joined into one line if it reads as prose (no code, tables, markup), else None."""
    lines = [ln.strip() for ln in par.strip().splitlines()]
    if any(ln.startswith(("```", ">>>", "|", "-", "*", "#", "..", ":", "+", "=")) for ln in lines if ln):
        return None
    text = " ".join(ln for ln in lines if ln)
    words = text.split()
    if not 35 <= len(words) <= 220 or "http" in text or "::" in text or "`" in text or "*" in text:
        return None
    alpha = sum(w.strip(".,;:()'\"!?").isalpha() for w in words) / len(words)
    return text if alpha >= 0.85 and text[-1] in ".!?" else None


def readme_texts() -> list[str]:
    seen: dict[str, str] = {}
    for d in metadata.distributions():
        name = (d.metadata.get("Name") or "").lower()
        text = d.metadata.get_payload() or d.metadata.get("Description") or ""
        if name and name not in seen and isinstance(text, str) and text.strip():
            seen[name] = text
    return [seen[k] for k in sorted(seen)]


def license_texts() -> list[str]:
    out: dict[str, str] = {}
    for d in metadata.distributions():
        for f in d.files or []:
            if f.name.lower().startswith(("license", "licence", "copying", "notice")):
                try:
                    text = f.read_text()
                except (OSError, UnicodeDecodeError):
                    continue
                if text and text.strip():
                    out.setdefault(_key(text), text)
    return [out[k] for k in sorted(out)]


def pyref_texts() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


def code_texts(limit: int = 300) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))[:limit]
    return [p.read_text(errors="replace") for p in files]


def prose_paragraphs() -> list[str]:
    """Clean prose paragraphs from READMEs and the language reference, deterministic order."""
    paras = {}
    for text in [*readme_texts(), *pyref_texts()]:
        for par in re.split(r"\n\s*\n", text):
            p = _prose(par)
            if p:
                paras.setdefault(_key(p), p)
    return [paras[k] for k in sorted(paras)]


# ---------------------------------------------------------------- corruptions
SPAM = (
    "buy now",
    "best price",
    "cheap pills online",
    "limited offer",
    "click here",
    "free shipping",
    "casino bonus",
    "100% free",
    "act now",
    "winner",
    "no prescription needed",
    "lose weight fast",
    "earn money from home",
    "hot singles",
    "discount code",
    "crypto giveaway",
    "work from home",
    "miracle cure",
    "VIP access",
    "risk free",
    "double your income",
    "order today",
    "exclusive deal",
    "instant approval",
    "replica watches",
)


def shuffled_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def char_noise(text: str, rng: random.Random, p: float = 0.12) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters) if c.isalpha() and rng.random() < p else c for c in text)


def keyword_spam(text: str, rng: random.Random) -> str:
    n = max(8, len(text.split()) // 3)
    parts = [rng.choice(SPAM) for _ in range(n)]
    parts = [p.upper() if rng.random() < 0.2 else p for p in parts]
    return " ".join(p + rng.choice(["!!!", "!", ",", " -", " |", ""]) for p in parts)


CORRUPTIONS = {"shuffled_words": shuffled_words, "char_noise": char_noise, "keyword_spam": keyword_spam}


def auc(neg: list[float], pos: list[float]) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ---------------------------------------------------------------- 1 + 2: perplexity
def _read_batch(texts: list[str]):
    import pyarrow as pa

    from storage.schema import READ_SCHEMA

    n = len(texts)
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols.update(id=[str(i) for i in range(n)], text=texts, domain=["web"] * n, source=["bench"] * n)
    return pa.table(cols, schema=READ_SCHEMA)


def bench_perplexity_throughput(op, texts: list[str], rounds: int) -> dict:
    import torch

    batch = _read_batch(texts)
    ids = op.encode(texts)
    tokens = sum(len(x) for x in ids)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))

    def bare(sequence_order: list[int]) -> None:
        for s in range(0, len(sequence_order), op.batch_size):
            seqs = [ids[i] for i in sequence_order[s : s + op.batch_size]]
            length = max(len(x) for x in seqs)
            x = torch.full((len(seqs), length), op.pad_id, dtype=torch.long)
            m = torch.zeros((len(seqs), length), dtype=torch.long)
            for r, q in enumerate(seqs):
                x[r, : len(q)] = torch.tensor(q)
                m[r, : len(q)] = 1
            with torch.inference_mode():
                op.model(input_ids=x.to(op.device), attention_mask=m.to(op.device), use_cache=False)
        if op.device.type == "cuda":  # the forward passes are queued on a GPU: time them to the end
            torch.cuda.synchronize()

    runs = {
        "scorer": lambda: op(batch),
        "bare_sorted": lambda: bare(order),
        "bare_unsorted": lambda: bare(list(range(len(ids)))),
    }
    op(_read_batch(texts[: op.batch_size]))  # warm up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    paired = [b / s for b, s in zip(times["bare_sorted"], times["scorer"])]
    return {
        "docs": len(texts),
        "tokens": tokens,
        "max_tokens": op.max_tokens,
        "batch_size": op.batch_size,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "tokens_per_s_best": {k: round(tokens / v, 1) for k, v in best.items()},
        "scorer_vs_bare": round(best["bare_sorted"] / best["scorer"], 3),
        "scorer_vs_bare_paired_median": round(statistics.median(paired), 3),
        "method": "best of N interleaved rounds (timeit-style; the machine is shared); paired = per-round ratios",
    }


def bench_perplexity_auc(op, paragraphs: list[str], n_per_kind: int) -> dict:
    rng = random.Random(0)
    clean = paragraphs[: 3 * n_per_kind]
    source = paragraphs[3 * n_per_kind : 6 * n_per_kind]
    corrupted = {
        k: [fn(t, rng) for t in source[i * n_per_kind : (i + 1) * n_per_kind]]
        for i, (k, fn) in enumerate(CORRUPTIONS.items())
    }
    texts = clean + [t for v in corrupted.values() for t in v]
    t0 = time.perf_counter()
    ppl = op(_read_batch(texts)).column("ppl").to_pylist()
    seconds = time.perf_counter() - t0
    c = ppl[: len(clean)]
    out = {"clean": len(clean), "per_corruption": n_per_kind, "max_tokens": op.max_tokens, "seconds": round(seconds, 1)}
    start = len(clean)
    per = {}
    for k in CORRUPTIONS:
        bad = ppl[start : start + n_per_kind]
        start += n_per_kind
        per[k] = {"auc": round(auc(c, bad), 4), "median_ppl": round(statistics.median(bad), 1)}
    out["auc"] = round(auc(c, ppl[len(clean) :]), 4)
    out["median_ppl_clean"] = round(statistics.median(c), 1)
    out["by_corruption"] = per
    return out


# ---------------------------------------------------------------- 3: fastText
def bench_fasttext(docs_pos: list[str], docs_neg: list[str], n_score: int) -> dict:
    from operators.classifier import QualityClassifier, train_classifier

    with tempfile.TemporaryDirectory() as d:
        pos, neg = Path(d) / "pos.txt", Path(d) / "neg.txt"
        pos.write_text("\n".join(t.replace("\n", " ") for t in docs_pos) + "\n")
        neg.write_text("\n".join(t.replace("\n", " ") for t in docs_neg) + "\n")
        t0 = time.perf_counter()
        report = train_classifier([str(pos)], [str(neg)], f"{d}/q.bin")  # DCLM: wordNgrams 2, defaults
        train_s = time.perf_counter() - t0
        model_mb = Path(f"{d}/q.bin").stat().st_size / 1e6
        op = QualityClassifier(stage="q", model=f"{d}/q.bin")
    pool = [*docs_pos, *docs_neg]
    texts = [pool[i % len(pool)] for i in range(n_score)]
    op.predict(texts[:100])
    t0 = time.perf_counter()
    op.predict(texts)
    s = time.perf_counter() - t0
    chars = sum(len(t) for t in texts)
    return {
        "train_docs": report["train"],
        "validation_accuracy": round(report["validation_accuracy"], 4),
        "train_seconds": round(train_s, 1),
        "model_mb": round(model_mb, 1),
        "docs_scored": n_score,
        "mean_chars": round(chars / n_score),
        "docs_per_s_per_core": round(n_score / s, 1),
        "mb_per_s_per_core": round(chars / s / 1e6, 2),
    }


# ---------------------------------------------------------------- 4: BETR
def bench_betr(domains: dict[str, list[str]], targets: list[str], target_domain: str, epoch: int) -> dict:
    import ray

    from pipelines.recipe import parse_recipe
    from pipelines.runner import run
    from storage.shards import read_shards

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    n = sum(len(v) for v in domains.values())
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        with open(root / "targets.jsonl", "w") as f:
            for t in targets:
                f.write(json.dumps({"question": t}) + "\n")
        (root / "in").mkdir()
        inputs = ""
        for dom, docs in domains.items():
            with open(root / "in" / f"{dom}.jsonl", "w") as f:
                for i, t in enumerate(docs):
                    f.write(json.dumps({"id": f"{dom}-{i:04d}", "text": t}) + "\n")
            inputs += f'  - {{path: "{root}/in/{dom}.jsonl", domain: {dom}, id_field: id}}\n'
        recipe = f"""inputs:
{inputs}stages:
  - op: betr
    targets: "{root}/targets.jsonl"
    sample_size: {n}
    positive_fraction: 0.1
    keep_fraction: 0.1
    min_count: 2
    epoch: {epoch}
    bucket: 200000
output: {{dir: "{root}/out", shard_mb: 4}}
"""
        t0 = time.perf_counter()
        m = run(parse_recipe(recipe))
        seconds = time.perf_counter() - t0
        kept = read_shards(str(root / "out" / "shards")).column("id").to_pylist()
    rep = m["stages"][1]["report"]
    share = {dom: round(sum(k.startswith(dom + "-") for k in kept) / max(1, len(kept)), 3) for dom in domains}
    return {
        "pool": {k: len(v) for k, v in domains.items()},
        "targets": len(targets),
        "target_domain": target_domain,
        "kept_docs": len(kept),
        "precision": share[target_domain],
        "kept_share_by_domain": share,
        "label_precision": round(rep["positives_by_domain"].get(target_domain, 0) / rep["positives"], 3),
        "positives_by_domain": rep["positives_by_domain"],
        "validation_accuracy": rep["validation_accuracy"],
        "cutoff": rep["cutoff"],
        "fasttext": rep["fasttext"],
        "seconds": round(seconds, 1),
        "stage_seconds": rep["seconds"],
    }


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about half the time)")
    ap.add_argument("--only", default="ppl,auc,fasttext,betr", help="comma-separated subset")
    ap.add_argument("--betr-epoch", type=int, default=5, help="fastText epochs for BETR (paper: 5)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    q = args.quick
    t_all = time.perf_counter()
    paragraphs = prose_paragraphs()
    results: dict = {
        "benchmark": "bench_scoring",
        "time": datetime.now(timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "2 CPU cores shared with other jobs; timings are noisy, ratios are measured in one process",
        "corpus": {"prose_paragraphs": len(paragraphs)},
    }
    if only & {"ppl", "auc"}:
        from operators.perplexity import Perplexity

        t0 = time.perf_counter()
        op = Perplexity(stage="bench", max_tokens=128, batch_size=16)
        results["model_load_seconds"] = round(time.perf_counter() - t0, 1)
        if "ppl" in only:
            rng = random.Random(1)
            texts = rng.sample(paragraphs, 32 if q else 48)
            print("perplexity throughput…", flush=True)
            results["perplexity_throughput"] = bench_perplexity_throughput(op, texts, rounds=3 if q else 5)
        if "auc" in only:
            op.max_tokens = 64
            print("perplexity AUC…", flush=True)
            results["perplexity_auc"] = bench_perplexity_auc(op, paragraphs, 10 if q else 20)
    if "fasttext" in only:
        print("fastText scoring…", flush=True)
        pos = [c for t in [*pyref_texts(), *readme_texts()] for c in _chunks(t, 2000)][:400]
        neg = [c for t in license_texts() for c in _chunks(t, 2000)][:400]
        results["fasttext"] = bench_fasttext(pos, neg, 5000 if q else 20000)
    if "betr" in only:
        print("BETR precision…", flush=True)
        per = 60 if q else 100
        pyref = [c for t in pyref_texts() for c in _chunks(t)]
        random.Random(2).shuffle(pyref)
        domains = {
            "pyref": pyref[:per],
            "readme": [c for t in readme_texts() for c in _chunks(t)][:per],
            "license": [c for t in license_texts() for c in _chunks(t)][:per],
            "code": [c for t in code_texts() for c in _chunks(t)][:per],
        }
        targets = pyref[per : per + 30]
        results["betr"] = bench_betr(domains, targets, "pyref", args.betr_epoch)
    results["seconds"] = round(time.perf_counter() - t_all, 1)

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_scoring-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nresults: {path}")


def markdown(r: dict) -> str:
    rows = ["| measurement | value | target |", "|---|---|---|"]
    if "perplexity_throughput" in r:
        t = r["perplexity_throughput"]
        tps = t["tokens_per_s_best"]
        rows.append(
            f"| perplexity scorer vs bare forward (same {t['docs']} docs, {t['tokens']} tokens, batch "
            f"{t['batch_size']}, ≤{t['max_tokens']} tokens, best of {t['rounds']}) | {t['scorer_vs_bare']:.0%} "
            f"(paired median {t['scorer_vs_bare_paired_median']:.0%}; {tps['scorer']} vs {tps['bare_sorted']} "
            f"tokens/s; "
            f"unsorted bare {tps['bare_unsorted']}) | ≥ 80% |"
        )
    if "perplexity_auc" in r:
        a = r["perplexity_auc"]
        per = ", ".join(f"{k} {v['auc']:.3f}" for k, v in a["by_corruption"].items())
        rows.append(
            f"| perplexity AUC clean vs corrupted ({a['clean']} clean, {a['per_corruption']} per corruption, "
            f"≤{a['max_tokens']} tokens) | {a['auc']:.3f} ({per}) | ≥ 0.95 |"
        )
    if "fasttext" in r:
        f = r["fasttext"]
        rows.append(
            f"| fastText quality scoring, one core ({f['mean_chars']} chars/doc, {f['model_mb']} MB model) | "
            f"{f['docs_per_s_per_core']:,} docs/s ({f['mb_per_s_per_core']} MB/s) | — |"
        )
    if "betr" in r:
        b = r["betr"]
        rows.append(
            f"| BETR precision: {b['target_domain']} share of kept top 10% of tokens (pool "
            f"{sum(b['pool'].values())} docs, 4 domains; {b['targets']} targets) | {b['precision']:.0%} "
            f"(embedding labels {b['label_precision']:.0%}; fastText validation acc "
            f"{b['validation_accuracy']}) | ≥ 80% |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
