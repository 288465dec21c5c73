"""GPU check: the model paths and the reference trainer measured on this machine, one command, one JSON.

Sections (each records its figures with device, dtype, sizes and seconds):

- ``nvidia_smi``: ``nvidia-smi --query-gpu=name,memory.total,driver_version`` (skipped without it);
- ``torch``: torch and CUDA versions, devices, bf16 support, CPU count and torch threads;
- ``perplexity``: the ``perplexity`` operator's tokens/s against the bare forward pass on the same
  sequences (``benchmarks.bench_scoring.bench_perplexity_throughput``), bf16 on a GPU;
- ``curate``: ``sluice curate`` of a one-stage ``perplexity`` recipe on the same documents, with
  ``--engine ray`` (the model in a Ray actor with ``num_gpus=1``) and ``--engine local`` (in process):
  tokens/s over the segment and over the whole command, against the bare forward pass (in this
  process; ``benchmarks.bench_model_stage``), and the cluster each run recorded;
- ``embedding``: sentence-transformers docs/s as ``betr`` and ``quality_classifier`` embed
  (``operators.classifier.embed``; on a GPU also with the encoder cast to bf16);
- ``rephrase_transformers`` / ``rephrase_vllm``: generated tokens/s of the ``rephrase`` backends on
  WRAP prompts of the Python language reference (``benchmarks.bench_rephrase.prompts_text``), greedy;
  vLLM runs in a child process (a fresh CUDA context; a crash there cannot take the check down) and is
  skipped, with the reason, where it is not installed or there is no GPU;
- ``trainer`` (:mod:`benchmarks.gpu_check_trainer`): tokens/s of the reference trainer on a run tokenized
  here, fed by ``sluice serve`` in its own process (``server``) and by a server inside the trainer's process
  (``in_process``), against the same step on one batch kept in memory (``in_memory``, the ceiling).

A section that cannot run records ``{"skipped": reason}``; one that raises records its error and the
check exits 1 once the JSON is written (it is rewritten after every section).

Run:
    bash benchmarks/gpu_check.sh                 # on a GPU: bf16, sizes meant to total <= 8 minutes
    bash benchmarks/gpu_check.sh --quick         # on a GPU: about a quarter of the work
    bash benchmarks/gpu_check.sh --cpu -o x.json # on CPU (even with a GPU): float32, one torch thread,
                                                 # tiny sizes (what tests/benchmarks/test_gpu_check.py runs)
Writes benchmarks/results/gpu_check-<UTC time>.json unless ``-o`` says where.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.gpu_check_trainer import trainer

if TYPE_CHECKING:
    from operators.rephrase.backends import Request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LM = "packaged:smollm2-135m"
ENCODER = "packaged:minilm-l6-v2"
SECTIONS = (
    "nvidia_smi", "torch", "perplexity", "curate", "embedding", "rephrase_transformers", "rephrase_vllm", "trainer"
)  # fmt: skip
VLLM_ENGINE = {"gpu_memory_utilization": 0.5, "max_model_len": 2048}
VLLM_TIMEOUT_S = 360


class Skip(Exception):
    """A section that cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; ``str()`` names the preset and its main sizes."""

    name: str
    ppl_docs: int
    ppl_chars: int
    ppl_max_tokens: int
    ppl_batch: int
    ppl_rounds: int
    embed_docs: int
    embed_chars: int
    embed_batch: int
    prompts: int
    chunk_tokens: int
    new_tokens: int
    gen_batch: int
    train_docs: int | None  # documents per domain of the tokenized run (None: all)
    train_doc_chars: int | None  # each cut to this many characters (None: whole)
    seq_len: int
    global_batch: int
    n_layer: int
    n_head: int
    n_embd: int
    train_steps: int
    bare_steps: int
    eval_sequences: int

    def __str__(self) -> str:
        return (
            f"{self.name}_ppl{self.ppl_docs}x{self.ppl_max_tokens}_emb{self.embed_docs}_gen{self.prompts}x"
            f"{self.new_tokens}_train{self.train_steps}xB{self.global_batch}xL{self.seq_len}"
        )


GPU = Sizes(
    name="gpu",
    ppl_docs=256, ppl_chars=4096, ppl_max_tokens=1024, ppl_batch=16, ppl_rounds=3,
    embed_docs=4096, embed_chars=1000, embed_batch=128,
    prompts=64, chunk_tokens=256, new_tokens=256, gen_batch=32,
    train_docs=None, train_doc_chars=None, seq_len=512, global_batch=16, n_layer=4, n_head=4, n_embd=256,
    train_steps=200, bare_steps=100, eval_sequences=16,
)  # fmt: skip
GPU_QUICK = replace(
    GPU, name="gpu-quick", ppl_docs=64, ppl_rounds=2, embed_docs=1024, prompts=32, new_tokens=128, train_docs=100,
    train_steps=60, bare_steps=30, eval_sequences=8,
)  # fmt: skip
CPU = Sizes(
    name="cpu",
    ppl_docs=4, ppl_chars=300, ppl_max_tokens=48, ppl_batch=4, ppl_rounds=1,
    embed_docs=16, embed_chars=400, embed_batch=8,
    prompts=2, chunk_tokens=32, new_tokens=8, gen_batch=2,
    train_docs=12, train_doc_chars=2000, seq_len=32, global_batch=4, n_layer=1, n_head=2, n_embd=16,
    train_steps=6, bare_steps=6, eval_sequences=2,
)  # fmt: skip


# ---------------------------------------------------------------- helpers
def _dtype(t: Any) -> str:
    return str(t).removeprefix("torch.")


def _text_pool(chars: int) -> list[str]:
    """Offline prose and code cut into ~``chars``-character chunks: language reference, READMEs, stdlib."""
    from benchmarks.bench_scoring import _chunks, code_texts, pyref_texts, readme_texts

    return [c for texts in (pyref_texts(), readme_texts(), code_texts()) for t in texts for c in _chunks(t, chars)]


def _docs(texts: list[str], n: int) -> list[str]:
    """``n`` documents, cycling through ``texts`` if there are fewer."""
    if not texts:
        raise RuntimeError("no offline text found (pydoc_data, package metadata, stdlib)")
    return [texts[i % len(texts)] for i in range(n)]


# ---------------------------------------------------------------- facts
def nvidia_smi(_: Sizes) -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise Skip("nvidia-smi is not on PATH")
    query = [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    out = subprocess.run(query, capture_output=True, text=True, timeout=60, check=True).stdout
    gpus = [dict(zip(("name", "memory_total", "driver_version"), (x.strip() for x in line.split(",")))) for line in
            out.strip().splitlines()]  # fmt: skip
    return {"command": " ".join(query[1:]), "gpus": gpus}


def torch_facts(_: Sizes) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["cudnn"] = torch.backends.cudnn.version()
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
        out["devices"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    return out


# ---------------------------------------------------------------- model sections
def perplexity(s: Sizes) -> dict[str, Any]:
    from benchmarks.bench_scoring import bench_perplexity_throughput
    from operators.perplexity import Perplexity

    t0 = time.perf_counter()
    op = Perplexity(stage="gpu_check", model=LM, max_tokens=s.ppl_max_tokens, batch_size=s.ppl_batch)
    load = time.perf_counter() - t0
    res = bench_perplexity_throughput(op, _docs(_text_pool(s.ppl_chars), s.ppl_docs), s.ppl_rounds)
    tps = res["tokens_per_s_best"]
    return {
        "device": op.device.type,
        "dtype": _dtype(next(op.model.parameters()).dtype),
        "model": LM,
        "load_seconds": round(load, 2),
        "tokens_per_s": tps["scorer"],
        "bare_forward_tokens_per_s": tps["bare_sorted"],
        **res,
    }


def curate(s: Sizes) -> dict[str, Any]:
    """The perplexity stage through ``sluice curate`` on each engine, against the bare forward pass here."""
    from benchmarks.bench_model_stage import bare
    from benchmarks.bench_model_stage import curate as run_curate

    texts = _docs(_text_pool(s.ppl_chars), s.ppl_docs)
    ref = bare(texts, s.ppl_max_tokens, s.ppl_batch, 1)
    tokens, bare_tps = ref["tokens"], ref["tokens_per_s_best"]["bare_sorted"]
    out: dict[str, Any] = {"docs": len(texts), "tokens": tokens, "bare_forward_tokens_per_s": bare_tps}
    for engine in ("ray", "local"):
        with tempfile.TemporaryDirectory() as tmp:
            run = run_curate(texts, s.ppl_max_tokens, s.ppl_batch, Path(tmp), None, engine)
        seg, cmd = tokens / run["segment_seconds"], tokens / run["command_seconds"]
        out[engine] = {
            **run,
            "segment_tokens_per_s": round(seg, 1),
            "command_tokens_per_s": round(cmd, 1),
            "segment_vs_bare": round(seg / bare_tps, 3),
            "command_vs_bare": round(cmd / bare_tps, 3),
        }
    return out


def embedding(s: Sizes) -> dict[str, Any]:
    import numpy as np
    import torch

    from operators.classifier import embed
    from operators.models import load_sentence_transformer

    t0 = time.perf_counter()
    encoder = load_sentence_transformer(ENCODER)
    load = time.perf_counter() - t0
    texts = _docs(_text_pool(s.embed_chars), s.embed_docs)

    def timed() -> tuple[float, np.ndarray]:
        embed(encoder, texts[: s.embed_batch], s.embed_batch)  # warm-up
        t = time.perf_counter()
        x = embed(encoder, texts, s.embed_batch)  # returns numpy: the GPU work is done
        return time.perf_counter() - t, x

    seconds, emb = timed()
    out: dict[str, Any] = {
        "device": encoder.device.type,
        "dtype": _dtype(next(encoder.parameters()).dtype),
        "model": ENCODER,
        "docs": len(texts),
        "mean_chars": round(sum(len(t) for t in texts) / len(texts)),
        "batch_size": s.embed_batch,
        "load_seconds": round(load, 2),
        "seconds": round(seconds, 3),
        "docs_per_s": round(len(texts) / seconds, 1),
    }
    if encoder.device.type == "cuda":  # what the operators' float32 encoder would gain in bf16
        encoder.to(torch.bfloat16)
        bf_seconds, bf_emb = timed()
        out["bf16"] = {
            "seconds": round(bf_seconds, 3),
            "docs_per_s": round(len(texts) / bf_seconds, 1),
            "min_cosine_to_float32": round(float((emb * bf_emb).sum(1).min()), 4),
        }
    return out


def _requests(s: Sizes, tok: Any) -> list[Request]:
    """``s.prompts`` WRAP ``easy`` chat requests on language-reference chunks (cycled when there are fewer)."""
    from benchmarks.bench_rephrase import prompts_text
    from operators.rephrase.backends import Request
    from operators.rephrase.prompts import STYLES

    chunks = _docs(prompts_text(min(s.prompts, 24), s.chunk_tokens, tok), s.prompts)
    return [Request(f"p{i}", tuple(STYLES["easy"].messages(c)), 0) for i, c in enumerate(chunks)]


def _generation(backend: Any, requests: list[Request], s: Sizes) -> dict[str, Any]:
    backend.generate(requests[:1])  # warm-up
    t0 = time.perf_counter()
    results = backend.generate(requests)
    seconds = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)}/{len(results)} requests failed, first: {errors[0]}")
    tokens = sum(r.n_tokens for r in results)
    return {
        "prompts": len(requests),
        "chunk_tokens": s.chunk_tokens,
        "max_new_tokens": s.new_tokens,
        "generated_tokens": tokens,
        "unfinished": sum(not r.finished for r in results),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "sample": results[0].text[:200],
    }


def rephrase_transformers(s: Sizes) -> dict[str, Any]:
    from operators.rephrase.backends import Sampling, TransformersBackend

    t0 = time.perf_counter()
    backend = TransformersBackend(LM, Sampling(temperature=0, max_new_tokens=s.new_tokens), batch_size=s.gen_batch)
    load = time.perf_counter() - t0
    return {
        "device": backend.device.type,
        "dtype": _dtype(next(backend.model.parameters()).dtype),
        "model": LM,
        "batch_size": s.gen_batch,
        "load_seconds": round(load, 2),
        "tokens_counted": "up to the end-of-turn token",
        **_generation(backend, _requests(s, backend.tok), s),
    }


def _vllm_skip() -> str | None:
    from operators.rephrase.backends import vllm_missing

    problem = vllm_missing()
    if problem:
        return problem
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU" + (" (--cpu hides it)" if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else "")
    return None


def rephrase_vllm(s: Sizes) -> dict[str, Any]:
    """In this process: the child that ``vllm_child`` starts calls it."""
    from operators.models import load_tokenizer
    from operators.rephrase.backends import Sampling, VLLMBackend

    problem = _vllm_skip()
    if problem:
        raise Skip(problem)
    t0 = time.perf_counter()
    backend = VLLMBackend(LM, Sampling(temperature=0, max_new_tokens=s.new_tokens), dict(VLLM_ENGINE))
    load = time.perf_counter() - t0
    return {
        "device": "cuda",
        "dtype": "bfloat16",
        "model": LM,
        "engine": VLLM_ENGINE,
        "load_seconds": round(load, 2),
        "tokens_counted": "completion token ids as vLLM returns them",
        **_generation(backend, _requests(s, load_tokenizer(LM)), s),
    }


def vllm_child(s: Sizes, argv: list[str]) -> dict[str, Any]:
    """``rephrase_vllm`` in a child process of this check; its section, or its error with the output's tail."""
    problem = _vllm_skip()
    if problem:
        raise Skip(problem)
    with tempfile.TemporaryDirectory(prefix="gpu_check-vllm-") as d:
        out = Path(d) / "vllm.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", *argv, "--only", "rephrase_vllm", "-o", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=VLLM_TIMEOUT_S)
        if not out.exists():
            raise RuntimeError(f"the vLLM child exited {proc.returncode} without a result: {proc.stderr[-2000:]}")
        section = json.loads(out.read_text())["sections"]["rephrase_vllm"]
    if "error" in section:
        raise RuntimeError(section["error"])
    return section


# ---------------------------------------------------------------- trainer
# ---------------------------------------------------------------- running
def run_section(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()`` with its wall time; a ``Skip`` becomes ``{"skipped": …}``, an exception ``{"error": …}``.

    On a GPU it also records the section's peak memory and frees the cached blocks it left.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        out = fn()
    except Skip as e:
        out = {"skipped": str(e)}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"[:4000], "traceback": traceback.format_exc()[-6000:]}
    out["section_seconds"] = round(time.perf_counter() - t0, 2)
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        out.setdefault("cuda_peak_memory_gb", round(torch.cuda.max_memory_allocated() / 2**30, 2))
        torch.cuda.empty_cache()
    return out


def summary(name: str, r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"{name}: skipped ({r['skipped'][:120]})"
    if "error" in r:
        return f"{name}: ERROR {r['error'][:300]}"
    figures = {
        "perplexity": lambda: f"{r['tokens_per_s']:,} tokens/s vs bare forward {r['bare_forward_tokens_per_s']:,}",
        "curate": lambda: ", ".join(
            f"{e} {r[e]['segment_tokens_per_s']:,} tokens/s ({r[e]['segment_vs_bare']:.0%} of bare)"
            for e in ("ray", "local")
        ),
        "embedding": lambda: f"{r['docs_per_s']:,} docs/s",
        "rephrase_transformers": lambda: f"{r['tokens_per_s']:,} generated tokens/s",
        "rephrase_vllm": lambda: f"{r['tokens_per_s']:,} generated tokens/s",
        "trainer": lambda: ", ".join(f"{k} {v['tokens_per_s']:,} tokens/s" for k, v in r["feeds"].items()),
        "nvidia_smi": lambda: "; ".join(", ".join(g.values()) for g in r["gpus"]),
        "torch": lambda: f"torch {r['torch']}, cuda {r['cuda_available']}, {r['torch_threads']} threads",
    }
    where = f" [{r['device']}, {r['dtype']}]" if "device" in r else ""
    return f"{name}{where}: {figures[name]()} ({r['section_seconds']} s)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on CPU even if there is a GPU: float32, tiny sizes")
    ap.add_argument("--quick", action="store_true", help="on a GPU: smaller sizes (about a quarter of the work)")
    ap.add_argument("-o", "--output", default=None, help="the JSON to write (default: benchmarks/results/)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported; child processes inherit it
    import torch

    from storage.run import write_text_atomic

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; pass --cpu to run the CPU check", file=sys.stderr)
        return 2
    if args.cpu:  # one intra-op thread, as a Ray actor with num_cpus=1 gets: more collapse on a shared machine
        torch.set_num_threads(1)
    sizes = CPU if args.cpu else GPU_QUICK if args.quick else GPU
    stamp = datetime.now(timezone.utc)
    path = Path(args.output) if args.output else RESULTS / f"gpu_check-{stamp:%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    only = [n for n in SECTIONS if n in args.only.split(",")]
    mode = [*(["--cpu"] if args.cpu else []), *(["--quick"] if args.quick else [])]
    fns: dict[str, Callable[[Sizes], dict[str, Any]]] = {
        "nvidia_smi": nvidia_smi,
        "torch": torch_facts,
        "perplexity": perplexity,
        "curate": curate,
        "embedding": embedding,
        "rephrase_transformers": rephrase_transformers,
        "rephrase_vllm": rephrase_vllm if only == ["rephrase_vllm"] else lambda s: vllm_child(s, mode),
        "trainer": lambda s: trainer(s, LM),
    }
    result: dict[str, Any] = {
        "check": "gpu_check",
        "time": stamp.isoformat(),
        "argv": sys.argv[1:] if argv is None else argv,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "sizes": {"preset": str(sizes), **asdict(sizes)},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "load": os.getloadavg()},
        "packages": {p: _version(p) for p in ("torch", "transformers", "sentence-transformers", "vllm", "pyarrow")},
        "sections": {},
    }
    t0 = time.perf_counter()
    for name in only:
        print(f"{name}…", flush=True)
        result["sections"][name] = r = run_section(lambda fn=fns[name]: fn(sizes))
        print(f"  {summary(name, r)}", flush=True)
        result["errors"] = [k for k, v in result["sections"].items() if "error" in v]
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")  # after every section: a killed run keeps the rest
    print(f"{result['seconds']} s; wrote {path}")
    return 1 if result["errors"] else 0


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
