"""Heuristic filters, Sluice vs datatrove: docs/s per core and agreement of the kept sets, on one corpus.

Measures, on the same documents in one run:
  (a) datatrove's GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter, FineWebQualityFilter and its
      three-stage exact dedup (on the same normalized text as Sluice's), each over the whole corpus, plus the
      FineWeb-ordered chain of all five; run in a separate Python that has datatrove (a subprocess);
  (b) Sluice's operators applied in-process to pyarrow batches, same filters and chain;
  (c) per filter: agreement of keep/remove decisions, Jaccard of the kept sets, identical reasons, and for c4
      identical rewritten text.
Speed is documents per CPU-second of the one process doing the work (docs/s per core), so other load on the
machine matters little. Both sides use the filters' default parameters.

Run (the datatrove side needs a throwaway venv; never install datatrove into the project's venv):
    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install datatrove spacy xxhash tokenizers
    .venv/bin/python -m benchmarks.bench_heuristics --docs 5000 --dt-python /tmp/dtvenv/bin/python
    .venv/bin/python -m benchmarks.bench_heuristics --corpus my.jsonl --json report.json   # any id/text JSONL
Without --dt-python (and without datatrove importable) only the Sluice side runs.

To add the end-to-end ``sluice curate`` run later: write a function that takes the corpus path and returns a
``Run`` for the chain (its decisions read back from the curated and removed outputs, its CPU seconds), and
register it in ``PIPELINE_RUNNERS``; it is then compared with datatrove's chain like the in-process one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FILTERS = ("gopher_repetition", "gopher_quality", "c4", "fineweb_quality", "exact_dedup")
CHAIN = "pipeline"  # all five, in FineWeb's order, each seeing the previous one's survivors
REQUIRED_SPEEDUP = 3.0
REQUIRED_AGREEMENT = 0.99


def _text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class Run:
    """One system's result for one filter: per document, the removal reason (None = kept)."""

    seconds: float  # CPU seconds of the process doing the work
    reasons: dict[str, str | None]
    texts: dict[str, str] = field(default_factory=dict)  # digest of the output text of kept docs (c4, chain)

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "reasons": self.reasons, "texts": self.texts}

    @classmethod
    def from_json(cls, d: dict) -> Run:
        return cls(d["seconds"], d["reasons"], d.get("texts", {}))


def read_corpus(path: str | Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [(str(r["id"]), r["text"]) for r in map(json.loads, f)]


# --- datatrove side (runs in the datatrove venv; imports nothing from Sluice) ------------------------------------
def _dedup_content(text: str) -> str:
    """Sluice's exact-dedup normalization (NFC, lowercase, whitespace collapsed), for datatrove's content getter."""
    import re
    import unicodedata

    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text).lower()).strip()


def _datatrove_dedup(docs: list, workdir: str) -> set[int]:
    """Indices of ``docs`` datatrove's three-stage exact dedup keeps."""
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )

    def content(doc) -> bytes:
        return _dedup_content(doc.text).encode()

    config = ExactDedupConfig(content_getter=content)
    sigs, dups = os.path.join(workdir, "sigs"), os.path.join(workdir, "dups")
    ExactDedupSignature(output_folder=sigs, config=config).run(iter(docs), rank=0, world_size=1)
    ExactFindDedups(data_folder=sigs, output_folder=dups, config=config).run(rank=0, world_size=1)
    for i, doc in enumerate(docs):
        doc.metadata["_i"] = i
    return {d.metadata["_i"] for d in ExactDedupFilter(data_folder=dups, config=config).run(iter(docs), 0, 1)}


def datatrove_worker(corpus: str, out: str) -> None:
    """Run every filter and the chain with datatrove; write ``{name: Run}`` as JSON to ``out``."""
    import logging

    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.logging import logger

    logger.remove()
    logging.disable(logging.WARNING)
    records = read_corpus(corpus)
    make = {
        "gopher_repetition": GopherRepetitionFilter,
        "gopher_quality": GopherQualityFilter,
        "c4": C4QualityFilter,
        "fineweb_quality": FineWebQualityFilter,
    }

    def verdict(res) -> str | None:
        return None if res is True else (res[1] if isinstance(res, tuple) else "removed")

    results: dict[str, Run] = {}
    for name, cls in make.items():
        flt = cls()
        docs = [Document(text=t, id=i) for i, t in records]
        t0 = time.process_time()
        reasons = {d.id: verdict(flt.filter(d)) for d in docs}
        results[name] = Run(time.process_time() - t0, reasons)
        if name == "c4":
            results[name].texts = {d.id: _text_digest(d.text) for d in docs if reasons[d.id] is None}

    with tempfile.TemporaryDirectory() as tmp:
        docs = [Document(text=t, id=i) for i, t in records]
        t0 = time.process_time()
        kept = _datatrove_dedup(docs, os.path.join(tmp, "alone"))
        seconds = time.process_time() - t0
        results["exact_dedup"] = Run(
            seconds, {d.id: None if k in kept else "exact_duplicate" for k, d in enumerate(docs)}
        )

        # the chain: documents flow one by one through the filters (as in a datatrove pipeline), then dedup
        chain = [cls() for cls in make.values()]
        docs = [Document(text=t, id=i) for i, t in records]
        reasons: dict[str, str | None] = {}
        t0 = time.process_time()
        survivors = []
        for d in docs:
            reason = None
            for flt in chain:
                reason = verdict(flt.filter(d))
                if reason is not None:
                    break
            reasons[d.id] = reason
            if reason is None:
                survivors.append(d)
        kept = _datatrove_dedup(survivors, os.path.join(tmp, "chain"))
        seconds = time.process_time() - t0
        for k, d in enumerate(survivors):
            if k not in kept:
                reasons[d.id] = "exact_duplicate"
        texts = {d.id: _text_digest(d.text) for d in survivors if reasons[d.id] is None}
        results[CHAIN] = Run(seconds, reasons, texts)

    Path(out).write_text(json.dumps({k: v.to_json() for k, v in results.items()}))


def run_datatrove(corpus: str, python: str) -> dict[str, Run]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "datatrove.json")
        cmd = [python, os.path.abspath(__file__), "--worker", corpus, out]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONHASHSEED": "0", "TQDM_DISABLE": "1"})
        return {k: Run.from_json(v) for k, v in json.loads(Path(out).read_text()).items()}


# --- Sluice side -------------------------------------------------------------------------------------------------
def _batches(records: list[tuple[str, str]], batch_size: int) -> list:
    import pyarrow as pa

    from storage.schema import READ_SCHEMA

    out = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        n = len(chunk)
        cols = {"id": [i for i, _ in chunk], "text": [t for _, t in chunk], "domain": ["web"] * n}
        out.append(pa.table({f.name: cols.get(f.name, [None] * n) for f in READ_SCHEMA}, schema=READ_SCHEMA))
    return out


def _exact_dedup_stage(batches: list) -> list:
    """Sluice's exact dedup, in process: the prepare pass (keys, groups) without Ray, then the row-wise pass."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from operators.dedup.exact import ExactDedup, normalized_key

    probe = ExactDedup(stage="exact_dedup")
    keys, ids = [], []
    for b in batches:
        live = np.flatnonzero(probe.active(b))
        keys += [normalized_key(t) for t in b.column("text").take(pa.array(live)).to_pylist()]
        ids += b.column("id").take(pa.array(live)).to_pylist()
    groups = pa.table({"_h": keys, "id": ids}).group_by("_h").aggregate([("id", "count"), ("id", "min")])
    dups = groups.filter(pc.greater(groups.column("id_count"), 1))
    survivors = dups.select(["_h", "id_min"]).rename_columns(["_h", "survivor"])
    op = ExactDedup(stage="exact_dedup", _shared={"dups": survivors})  # an in-process table: nothing to fetch
    return [op(b) for b in batches]


def _collect(batches: list, seconds: float, with_texts: bool) -> Run:
    reasons: dict[str, str | None] = {}
    texts: dict[str, str] = {}
    for b in batches:
        for i, r, t in zip(b.column("id").to_pylist(), b.column("reason").to_pylist(), b.column("text").to_pylist()):
            reasons[i] = r
            if with_texts and r is None:
                texts[i] = _text_digest(t)
    return Run(seconds, reasons, texts)


def run_sluice(corpus: str, batch_size: int = 1000) -> dict[str, Run]:
    """Sluice's operators applied in-process to pyarrow batches, each filter alone and then the chain."""
    import operators
    from operators.base import REGISTRY

    operators.load_all()
    records = read_corpus(corpus)
    results: dict[str, Run] = {}
    for name in FILTERS:
        batches = _batches(records, batch_size)
        t0 = time.process_time()
        if name == "exact_dedup":
            out = _exact_dedup_stage(batches)
        else:
            op = REGISTRY[name](stage=name)
            out = [op(b) for b in batches]
        results[name] = _collect(out, time.process_time() - t0, with_texts=name == "c4")

    batches = _batches(records, batch_size)
    ops = [REGISTRY[name](stage=name) for name in FILTERS[:-1]]
    t0 = time.process_time()
    for op in ops:
        batches = [op(b) for b in batches]
    batches = _exact_dedup_stage(batches)
    results[CHAIN] = _collect(batches, time.process_time() - t0, with_texts=True)
    return results


def run_sluice_curate(corpus: str, cores: int = 2) -> Run:
    """The same chain end to end through ``pipelines.runner.run`` on a local Ray with ``cores`` CPUs.

    Everything counts: reading JSONL, the filters, the exact-dedup shuffle, checkpoints, writing shards
    and removed rows, the manifest. Its "CPU seconds" are wall seconds x ``cores`` (Ray spreads the work
    over worker processes), so its docs/s per core is conservative.
    """
    import ray

    from pipelines.recipe import parse_recipe
    from pipelines.runner import run
    from storage.views import connect

    with tempfile.TemporaryDirectory() as tmp:
        stages = "\n".join(f"  - {{op: {name}}}" for name in FILTERS)
        recipe = parse_recipe(
            f"inputs:\n  - {{path: '{corpus}', domain: web, id_field: id}}\nstages:\n{stages}\n"
            f"output: {{dir: '{tmp}/out'}}\n"
        )
        if not ray.is_initialized():
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        run(recipe)
        wall = time.perf_counter() - t0
        con = connect(f"{tmp}/out")
        reasons = dict(con.execute("SELECT id, reason FROM removed").fetchall())
        kept = con.execute("SELECT id, text FROM docs").fetchall()
        reasons.update({i: None for i, _ in kept})
        texts = {i: _text_digest(t) for i, t in kept}
    print(f"sluice curate: {wall:.1f} s wall on {cores} CPUs", file=sys.stderr)
    return Run(wall * cores, reasons, texts)


#: extra systems for the chain, compared with datatrove's chain: name -> fn(corpus path) -> Run
PIPELINE_RUNNERS: dict[str, Callable[[str], Run]] = {"sluice curate (Ray)": run_sluice_curate}


# --- comparison --------------------------------------------------------------------------------------------------
def compare(ref: Run, cand: Run) -> dict:
    ids = ref.reasons.keys()
    if set(ids) != set(cand.reasons):
        raise ValueError("the two runs saw different documents")
    n = len(ids)
    kept_ref = {i for i in ids if ref.reasons[i] is None}
    kept_cand = {i for i in ids if cand.reasons[i] is None}
    union = kept_ref | kept_cand
    out = {
        "decision_agreement": 1 - len(kept_ref ^ kept_cand) / n if n else 1.0,
        "kept_jaccard": len(kept_ref & kept_cand) / len(union) if union else 1.0,
        "reason_agreement": sum(ref.reasons[i] == cand.reasons[i] for i in ids) / n if n else 1.0,
        "kept_ref": len(kept_ref),
        "kept_cand": len(kept_cand),
    }
    both = kept_ref & kept_cand
    if ref.texts and cand.texts and both:
        out["same_text"] = sum(ref.texts[i] == cand.texts[i] for i in both) / len(both)
    return out


def report(n_docs: int, sluice: dict[str, Run], datatrove: dict[str, Run] | None, extra: dict[str, Run]) -> dict:
    rows = {}
    print(f"{n_docs} documents; docs/s per core (CPU time of one process)")
    cols = ("sluice", "datatrove", "speedup", "agree", "jaccard", "reason")
    print(f"{'filter':18s} " + " ".join(f"{c:>{w}s}" for c, w in zip(cols, (10, 10, 8, 7, 8, 7))))
    for name in (*FILTERS, CHAIN):
        s = sluice[name]
        row = {
            "sluice_docs_per_s": n_docs / max(s.seconds, 1e-9),
            "sluice_kept": sum(r is None for r in s.reasons.values()),
        }
        line = f"{name:18s} {row['sluice_docs_per_s']:10.0f}"
        if datatrove is not None:
            d = datatrove[name]
            row["datatrove_docs_per_s"] = n_docs / max(d.seconds, 1e-9)
            row["speedup"] = row["sluice_docs_per_s"] / row["datatrove_docs_per_s"]
            row.update(compare(d, s))
            line += (
                f" {row['datatrove_docs_per_s']:10.0f} {row['speedup']:7.1f}x {row['decision_agreement']:7.4f}"
                f" {row['kept_jaccard']:8.4f} {row['reason_agreement']:7.4f}"
            )
            if "same_text" in row:
                line += f"  text {row['same_text']:.4f}"
        print(line)
        rows[name] = row
    for name, run in extra.items():
        row = {"docs_per_s": n_docs / max(run.seconds, 1e-9)}
        if datatrove is not None:
            row.update(compare(datatrove[CHAIN], run))
        print(f"{name:18s} {row['docs_per_s']:10.0f}  {json.dumps({k: round(v, 4) for k, v in row.items()})}")
        rows[name] = row
    if datatrove is not None:
        ok = all(
            rows[n]["speedup"] >= REQUIRED_SPEEDUP and rows[n]["decision_agreement"] >= REQUIRED_AGREEMENT
            for n in (*FILTERS[:-1], CHAIN)
        )
        print(
            f"target (>= {REQUIRED_SPEEDUP}x and >= {REQUIRED_AGREEMENT:.0%} agreement on every filter): "
            f"{'met' if ok else 'NOT met'}"
        )
    return rows


def _find_datatrove_python(arg: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("DATATROVE_PYTHON"):
        return os.environ["DATATROVE_PYTHON"]
    try:
        import datatrove  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=5000, help="documents to generate (ignored with --corpus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", help="an existing JSONL file with id and text fields")
    parser.add_argument("--dt-python", help="a Python with datatrove installed (default: $DATATROVE_PYTHON)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--worker", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        datatrove_worker(*args.worker)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from benchmarks.webgen import write_jsonl

            corpus = str(write_jsonl(os.path.join(tmp, "corpus.jsonl"), args.docs, args.seed))
        n_docs = len(read_corpus(corpus))
        python = _find_datatrove_python(args.dt_python)
        datatrove = None
        if python is None:
            print("datatrove not available: pass --dt-python or set DATATROVE_PYTHON to compare", file=sys.stderr)
        else:
            datatrove = run_datatrove(corpus, python)
        sluice = run_sluice(corpus, args.batch_size)
        extra = {name: fn(corpus) for name, fn in PIPELINE_RUNNERS.items()}
        rows = report(n_docs, sluice, datatrove, extra)
    if args.json:
        Path(args.json).write_text(json.dumps({"docs": n_docs, "filters": rows}, indent=2))


if __name__ == "__main__":
    main()
