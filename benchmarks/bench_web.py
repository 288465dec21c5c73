"""The whole web recipe (pipelines/recipes/web.yaml) beside datatrove's FineWeb pipeline, on the same WARC files.

The crawl is :mod:`benchmarks.web_crawl`: real HTML pages of Debian's Python 3.11, PostgreSQL 15 and
Linux 6.1 manuals as Common Crawl-like ``.warc.gz`` files, each page as installed or cut into sections inside
generated news/blog layouts, with planted duplicates, block-listed URLs and PDF responses; FineWeb's block
lists; an eval set of passages mostly from pages kept out of the crawl. The crawl is built once per parameter
set under ``--work``.

Pipelines, each run as its own process tree, one after the other, on the same cores:

* **Sluice**: ``sluice curate`` of web.yaml's stages as shipped (url_filter → extract → language_id →
  gopher_repetition → gopher_quality → c4 → fineweb_quality → minhash_dedup → pii → decontaminate →
  tokenize → split), only the input, list, eval-set and output paths rewritten; once with the default
  extractor (resiliparse) and once with ``backend: trafilatura`` for an extractor-for-extractor comparison.
  Ray (local, every visible CPU: ``sluice curate`` has no CPU option) starts inside the measured process.
* **datatrove** (in ``--dt-python``, a venv of its own): datatrove's examples/fineweb.py in its structure and
  values — WarcReader → URLFilter → Trafilatura(favour_precision) → LanguageFilter(en, 0.65) →
  GopherRepetition → GopherQuality → C4Quality(filter_no_terminal_punct=False) → FineWebQuality →
  JsonlWriter, each filter with its exclusion writer; MinHash signatures → buckets → cluster → filter
  (5-grams, 14 buckets × 8 hashes, 64-bit xxhash); then PIIFormatter, NGramsDecontFilter (13-grams,
  index built with datatrove's own n-gram hashing from the same eval file), JsonlWriter and
  DocumentTokenizer with the same SmolLM2 tokenizer file. LocalPipelineExecutor, tasks = workers =
  ``--cpus`` (the bucket stage: 14 tasks, as datatrove prescribes; clustering: 1). datatrove ships no
  resiliparse extractor (0.10.1), hence the Sluice run with trafilatura.

Measured per run: wall seconds from process start to exit (interpreter start, imports and Ray start
included), CPU seconds (user + system) of the process and every process it starts — Ray's GCS, raylet and
workers; datatrove's pool workers and extractor sandboxes — polled every 0.2 s from /proc through psutil
(:class:`benchmarks.measure.TreeCpu`; a process loses at most its last 0.2 s), documents in (HTML
responses read) and kept (tokenized). docs/s per core = docs in / (wall × cores); docs per CPU-second =
docs in / CPU seconds. Stage by stage kept counts come from Sluice's manifest and datatrove's stats.json.
``--calibrate N`` also times the extractors alone on N of the pages, in one process each
(trafilatura 1.11 as datatrove pins it, trafilatura 2.x and resiliparse as Sluice runs them).

Run (the first run downloads and unpacks four Debian packages with apt-get, ~70 MB, into --debs)::

    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install "datatrove[io,processing]" spacy lxml_html_clean
    .venv/bin/python -m benchmarks.bench_web --records 10000 --dt-python /tmp/dtvenv/bin/python

Writes benchmarks/results/bench_web-<UTC time>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.measure import run_measured, run_script
from benchmarks.web_crawl import build_crawl

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "recipes" / "web.yaml"
TARGET = 3.0


# ---------------------------------------------------------------------------------------------- Sluice
def sluice_recipe(root: Path, crawl: dict, backend: str | None, out: Path) -> str:
    """web.yaml as shipped, its input, lists, eval set and output pointed at the bench's files."""
    import yaml

    r = yaml.safe_load(RECIPE.read_text())
    r["inputs"][0]["path"] = str(root / "crawl" / "*.warc.gz")
    lists = crawl["lists"]
    for st in r["stages"]:
        if st["op"] == "url_filter":
            st.update(block_domains=lists["domains"], block_urls=lists["urls"], block_words=lists["words"])
        elif st["op"] == "extract" and backend:
            st["backend"] = backend
        elif st["op"] == "decontaminate":
            st["eval_sets"] = [crawl["evals"]]
    r["output"] = {"dir": str(out), "shard_mb": 256}
    return yaml.safe_dump(r, sort_keys=False)


def run_sluice(root: Path, crawl: dict, backend: str | None) -> dict:
    name = f"sluice-{backend or 'resiliparse'}"
    out = root / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    recipe = root / f"{name}.yaml"
    recipe.write_text(sluice_recipe(root, crawl, backend, out))
    cmd = [str(Path(sys.executable).with_name("sluice")), "curate", str(recipe)]  # the venv's console script
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "HF_HUB_OFFLINE": "1"}
    done, wall, cpu = run_measured(cmd, env)
    if done.returncode != 0:
        raise RuntimeError(f"sluice curate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    m = json.loads((out / "manifest.json").read_text())
    st = {s["stage"]: s for s in m["stages"]}
    stages = {"read": st["input"]["rows_out"]}
    for s in m["stages"][1:]:
        stages[s["stage"]] = s["rows_out"]
    mh = (st.get("minhash_dedup", {}).get("report") or {}).get("duplicates_removed")
    return {
        "system": "sluice",
        "extractor": f"{backend or 'resiliparse'} {_version(backend or 'resiliparse')}",
        "cores": m["cluster"]["cpus"],
        "docs_in": st["input"]["rows_out"],
        "kept": m["conservation"]["kept"],
        "tokens": sum(d.get("tokens") or 0 for d in m["domains"]),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "pipeline_seconds": m["seconds"],
        "stages": stages,
        "stage_seconds": {s["stage"]: s["seconds"] for s in m["stages"][1:]},
        "removed": {s["stage"]: s["removed"] for s in m["stages"] if s["removed"]},
        "minhash_duplicates_removed": mh,
        "conservation_ok": m["conservation"]["ok"],
    }


# ---------------------------------------------------------------------------------------------- datatrove
DATATROVE = r"""
import json, os, sys, time
from types import SimpleNamespace

import numpy as np
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
    GopherRepetitionFilter, LanguageFilter, URLFilter)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader, WarcReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.typeshelper import Languages
from datatrove.utils.word_tokenizers import load_word_tokenizer

a = json.loads(sys.argv[1])
W, T = a["work"], a["cpus"]


class ListURLFilter(URLFilter):
    # datatrove's URLFilter with the bench's three lists and nothing else (use_integrated_lists=False), read
    # in the worker on first use as its integrated lists are, instead of pickled into every task; the public
    # suffix list is tldextract's bundled copy (no download).
    def __init__(self, domains, urls, words, **kw):
        super().__init__(use_integrated_lists=False, **kw)
        from tldextract import TLDExtract
        self.tldextractor = TLDExtract(suffix_list_urls=())
        self.list_files = (domains, urls, words)

    def filter(self, document):
        if self.list_files:
            from datatrove.pipeline.filters.url_filter import parse_list  # runs in a worker: no __main__ globals

            d, u, w = self.list_files
            with open(d) as f:
                self.block_listed_domains = parse_list(f, do_normalize=False)
            with open(u) as f:
                self.block_listed_url = parse_list(f, do_normalize=False)
            with open(w) as f:
                self.banned_words = parse_list(f)
            self.list_files = None
        return super().filter(document)


def removed(name):
    return JsonlWriter(f"{W}/removed/{name}")


lid = LanguageFilter(languages=["en"], language_threshold=0.65, exclusion_writer=removed("2_non_english"))
lid.model.MODEL_URL = "file://" + a["lid_model"]  # the same lid.176.ftz file Sluice uses, copied into the cache
mh = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8, n_grams=5)
dcfg = NGramsDecontConfig(n_grams=13)
stats, seconds = {}, {}
t0 = time.perf_counter()


def stage(name, pipeline, tasks, workers):
    s = time.perf_counter()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=f"{W}/logs/{name}").run()
    seconds[name] = time.perf_counter() - s
    with open(f"{W}/logs/{name}/stats.json") as f:
        stats[name] = json.load(f)


stage("base", [
    WarcReader(a["crawl"], glob_pattern="*.warc.gz", default_metadata={"dump": "bench"}),
    ListURLFilter(*a["lists"], exclusion_writer=removed("1_url")),
    Trafilatura(favour_precision=True),
    lid,
    GopherRepetitionFilter(exclusion_writer=removed("3_gopher_rep")),
    GopherQualityFilter(exclusion_writer=removed("4_gopher_qual")),
    C4QualityFilter(filter_no_terminal_punct=False, exclusion_writer=removed("5_c4")),
    FineWebQualityFilter(exclusion_writer=removed("6_fineweb_qual")),
    JsonlWriter(f"{W}/output"),
], T, T)
stage("signatures", [JsonlReader(f"{W}/output"), MinhashDedupSignature(output_folder=f"{W}/mh/sigs", config=mh)], T, T)
stage("buckets", [MinhashDedupBuckets(input_folder=f"{W}/mh/sigs", output_folder=f"{W}/mh/buckets", config=mh)],
      mh.num_buckets, T)
stage("cluster", [MinhashDedupCluster(input_folder=f"{W}/mh/buckets", output_folder=f"{W}/mh/remove_ids", config=mh)],
      1, 1)
# the decontamination index: datatrove's own n-gram hashing (NGramsDecontIndexer.compute_hashes) of every eval
# passage; the indexer step itself loads its tasks through lighteval, which cannot read a local file
s = time.perf_counter()
me = SimpleNamespace(tokenizer=load_word_tokenizer(Languages.english), config=dcfg,
                     hash_func=create_hash_func(dcfg.hash_config))
hashes = set()
with open(a["evals"]) as f:
    for line in f:
        hashes.update(NGramsDecontIndexer.compute_hashes(me, json.loads(line)["text"]))
os.makedirs(f"{W}/decont", exist_ok=True)
np.array(sorted(hashes), dtype=dcfg.hash_config.np_descr).tofile(f"{W}/decont/benchmarks.index.hashes")
seconds["decont_index"] = time.perf_counter() - s
stage("final", [
    JsonlReader(f"{W}/output"),
    MinhashDedupFilter(input_folder=f"{W}/mh/remove_ids", exclusion_writer=removed("7_minhash")),
    PIIFormatter(),
    NGramsDecontFilter(index_folder=f"{W}/decont", config=dcfg, exclusion_writer=removed("8_decont")),
    JsonlWriter(f"{W}/final"),
    DocumentTokenizer(output_folder=f"{W}/tokens", tokenizer_name_or_path=a["tokenizer"], eos_token=a["eos"],
                      shuffle_documents=False),
], T, T)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "stage_seconds": seconds, "stats": stats,
                              "eval_hashes": len(hashes)}))
"""

#: (datatrove stage, text in the step's name) -> the Sluice stage doing that work (for the stage-by-stage table)
DT_STEPS = {
    ("base", "Warc"): "read",
    ("base", "Url-filter"): "url_filter",
    ("base", "Trafilatura"): "extract",
    ("base", "Language ID"): "language_id",
    ("base", "Gopher Repetition"): "gopher_repetition",
    ("base", "Gopher Quality"): "gopher_quality",
    ("base", "C4 Quality"): "c4",
    ("base", "FineWeb Quality"): "fineweb_quality",
    ("final", "MinHash stage 4"): "minhash_dedup",
    ("final", "PII"): "pii",
    ("final", "N-grams decontaminate"): "decontaminate",
    ("final", "WRITER"): "tokenize",  # the documents written next to their tokens
    ("final", "TOKENIZER"): "tokens",
}


def _dt_counts(stats: dict) -> dict[str, dict]:
    """Per datatrove step (named as the Sluice stage it matches): its counters (total, forwarded, dropped…)."""
    out: dict[str, dict] = {}
    for (stage, key), ours in DT_STEPS.items():
        for step in stats.get(stage, []):
            if key in step.get("name", ""):
                out[ours] = {k: v.get("total", v) if isinstance(v, dict) else v for k, v in step["stats"].items()}
    return out


def run_datatrove(python: str, root: Path, crawl: dict, cpus: int) -> dict:
    from operators.langid import packaged_model_path
    from operators.models import load_tokenizer, resolve

    work = root / "runs" / "datatrove"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tok_dir = Path(resolve("packaged:smollm2-135m"))
    eos = load_tokenizer("packaged:smollm2-135m").eos_token
    args = {
        "work": str(work),
        "cpus": cpus,
        "crawl": str(root / "crawl"),
        "lists": [crawl["lists"][k] for k in ("domains", "urls", "words")],
        "evals": crawl["evals"],
        "lid_model": packaged_model_path(),
        "tokenizer": str(tok_dir / "tokenizer.json"),
        "eos": eos,
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf"), "TLDEXTRACT_CACHE": str(work / "tld")}
    res = run_script(python, DATATROVE, args, env)
    counts = _dt_counts(res["stats"])
    stages = {}
    for ours, c in counts.items():
        if ours == "read":
            stages[ours] = c.get("documents", 0)
        elif ours in ("pii", "tokenize"):
            stages[ours] = c.get("total", 0)
        elif ours != "tokens":
            stages[ours] = c.get("forwarded", 0)
    res.update(
        system="datatrove",
        extractor="trafilatura (datatrove's, v" + _dt_version(python, "trafilatura") + ")",
        cores=cpus,
        docs_in=stages.get("read", 0),
        kept=stages.get("tokenize", 0),
        tokens=counts.get("tokens", {}).get("tokens"),
        extract_failures={k: v for k, v in counts.get("extract", {}).items() if k in ("timeout", "clean_error")},
        pipeline_seconds=res.pop("seconds"),
        stages=stages,
        step_stats=counts,
    )
    res.pop("stats")
    return res


def _dt_version(python: str, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() or "?"


# ---------------------------------------------------------------------------------------------- extractors alone
CALIBRATE = r"""
import json, sys, time
a = json.loads(sys.argv[1])
pages = [json.loads(line)["html"] for line in open(a["pages"])]
from datatrove.pipeline.extractors import Trafilatura
ex = Trafilatura(favour_precision=True)
ex.extract(pages[0])
t = time.process_time()
chars = sum(len(ex.extract(p) or "") for p in pages)
print("RESULT " + json.dumps({"cpu": time.process_time() - t, "chars": chars}))
"""


def calibrate(root: Path, n: int, dt_python: str | None) -> dict:
    """Pages per CPU-second of each extractor alone on the first ``n`` HTML documents of the crawl."""
    from warcio.archiveiterator import ArchiveIterator

    from operators.extract import BACKENDS

    pages: list[str] = []
    for path in sorted((root / "crawl").glob("*.warc.gz")):
        with open(path, "rb") as f:
            for r in ArchiveIterator(f):
                if len(pages) >= n:
                    break
                if r.rec_type == "response" and r.http_headers.get_header("Content-Type", "").startswith("text/html"):
                    pages.append(r.content_stream().read().decode("utf-8", "replace"))
    out = {"pages": len(pages)}
    for name in ("resiliparse", "trafilatura"):
        fn = BACKENDS[name]()
        fn(pages[0])
        t = time.process_time()
        chars = sum(len(fn(p)) for p in pages)
        cpu = time.process_time() - t
        version = _version(name)
        out[f"{name} {version} (sluice)"] = {"pages_per_cpu_s": round(len(pages) / cpu, 1), "chars": chars}
    if dt_python:
        f = root / "calibrate-pages.jsonl"
        f.write_text("".join(json.dumps({"html": p}) + "\n" for p in pages))
        res = run_script(dt_python, CALIBRATE, {"pages": str(f)})
        out[f"trafilatura {_dt_version(dt_python, 'trafilatura')} (datatrove)"] = {
            "pages_per_cpu_s": round(len(pages) / res["cpu"], 1),
            "chars": res["chars"],
        }
    return out


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------------------------- report
def stage_names() -> tuple[str, ...]:
    """The report's columns: the read, then web.yaml's stages in order."""
    import yaml

    return ("read", *(st["op"] for st in yaml.safe_load(RECIPE.read_text())["stages"]))


def finish(run: dict) -> dict:
    wall, cpu, n, cores = run["wall_seconds"], run["cpu_seconds"], run["docs_in"], run["cores"]
    run["docs_per_s_per_core"] = round(n / (wall * cores), 2)
    run["docs_per_cpu_s"] = round(n / cpu, 2)
    run["pipeline_docs_per_s_per_core"] = round(n / (run["pipeline_seconds"] * cores), 2)
    run["cpu_utilisation"] = round(cpu / (wall * cores), 2)
    run["wall_seconds"], run["cpu_seconds"] = round(wall, 1), round(cpu, 1)
    run["pipeline_seconds"] = round(run["pipeline_seconds"], 1)
    return run


def tables(result: dict) -> str:
    runs = result["runs"]
    dt = runs.get("datatrove")
    lines = [
        "| pipeline | extractor | docs in | kept | wall s | CPU s | docs/s per core | docs per CPU-s "
        "| vs datatrove (per core / per CPU-s) | tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        vs = "–"
        if dt and name != "datatrove":
            a = r["docs_per_s_per_core"] / dt["docs_per_s_per_core"]
            b = r["docs_per_cpu_s"] / dt["docs_per_cpu_s"]
            vs = f"**{a:.2f}×** / {b:.2f}×"
        lines.append(
            f"| {name} | {r['extractor']} | {r['docs_in']:,} | {r['kept']:,} | {r['wall_seconds']} "
            f"| {r['cpu_seconds']} | {r['docs_per_s_per_core']:,} | {r['docs_per_cpu_s']:,} | {vs} "
            f"| {r.get('tokens') or 0:,} |"
        )
    lines += ["", "| stage (documents left after it) | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for st in stage_names():
        cells = [f"{r['stages'][st]:,}" if st in r["stages"] else "–" for r in runs.values()]
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    cal = result.get("calibration")
    if cal:
        lines += ["", f"| extractor alone ({cal['pages']} pages, one process) | pages per CPU-s |", "|---|---:|"]
        for k, v in cal.items():
            if k != "pages":
                lines.append(f"| {k} | {v['pages_per_cpu_s']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000, help="HTML documents in the crawl")
    ap.add_argument("--files", type=int, default=4, help="WARC files the crawl is written as")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="datatrove's tasks and workers")
    ap.add_argument("--dt-python", help="a Python with datatrove installed (e.g. /tmp/dtvenv/bin/python)")
    ap.add_argument("--runs", default="sluice,sluice-trafilatura,datatrove", help="which pipelines to run")
    ap.add_argument("--lists", choices=("fineweb", "small"), default="fineweb", help="block lists (see web_crawl.py)")
    ap.add_argument("--dup-share", type=float, default=0.12)
    ap.add_argument("--blocked-share", type=float, default=0.01)
    ap.add_argument("--page-share", type=float, default=0.35, help="share of manual pages kept whole")
    ap.add_argument("--calibrate", type=int, default=200, help="pages for the extractor-alone timing (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--debs", type=Path, default=Path("/tmp/debian-docs"), help="where the .debs go and unpack")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sluice-bench-web"))
    args = ap.parse_args(argv)
    if args.cpus != os.cpu_count():
        print(f"note: sluice curate's Ray takes all {os.cpu_count()} CPUs, datatrove {args.cpus}", file=sys.stderr)
    wanted = args.runs.split(",")
    if "datatrove" in wanted and not args.dt_python:
        print("no --dt-python: the datatrove run is skipped", file=sys.stderr)
        wanted.remove("datatrove")
    root = args.work / f"r{args.records}-s{args.seed}"
    root.mkdir(parents=True, exist_ok=True)
    print(f"building the crawl under {root} …", flush=True)
    crawl = build_crawl(args, root)
    print(f"crawl: {crawl['html_documents']:,} HTML documents ({crawl['html_mb']} MB), {crawl['kinds']}")
    mb = crawl["warc"]["bytes"] / 2**20
    print(f"       languages {crawl['languages']}; {crawl['warc']['files']} WARC files, {mb:.1f} MB")
    result: dict = {
        "crawl": crawl,
        "cpus": args.cpus,
        "machine": {
            "cpus_visible": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        "versions": {"trafilatura (sluice)": _version("trafilatura"), "resiliparse": _version("resiliparse")},
        "runs": {},
    }
    if args.dt_python:
        result["versions"]["datatrove"] = _dt_version(args.dt_python, "datatrove")
        result["versions"]["trafilatura (datatrove)"] = _dt_version(args.dt_python, "trafilatura")
    from operators.models import resolve

    resolve("packaged:smollm2-135m")  # a first use converts the packaged model once: not part of any timing
    for name in wanted:
        print(f"running {name} …", flush=True)
        if name == "sluice":
            r = run_sluice(root, crawl, None)
        elif name == "sluice-trafilatura":
            r = run_sluice(root, crawl, "trafilatura")
        elif name == "datatrove":
            r = run_datatrove(args.dt_python, root, crawl, args.cpus)
        else:
            raise SystemExit(f"unknown run {name!r}")
        result["runs"][name] = finish(r)
        print(f"  {r['wall_seconds']} s wall, {r['cpu_seconds']} CPU s, {r['docs_per_s_per_core']} docs/s per core")
    if args.calibrate:
        result["calibration"] = calibrate(root, args.calibrate, args.dt_python)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    dt = result["runs"].get("datatrove")
    if dt:
        result["ratios"] = {
            name: {
                "docs_per_s_per_core": round(r["docs_per_s_per_core"] / dt["docs_per_s_per_core"], 2),
                "docs_per_cpu_s": round(r["docs_per_cpu_s"] / dt["docs_per_cpu_s"], 2),
                "target": TARGET,
            }
            for name, r in result["runs"].items()
            if name != "datatrove"
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_web-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print()
    print(tables(result))
    load = result["machine"]["load_average_before"]
    print(f"\n(written to {path.relative_to(RESULTS.parents[1])}; {args.cpus} CPUs; load average before {load})")


if __name__ == "__main__":
    main()
