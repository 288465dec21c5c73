"""Rephrasing throughput: generated tokens/s of the `rephrase` transformers backend against a plain generate loop.

The prompts are real offline text: paragraphs of the Python language reference (``pydoc_data.topics``),
cut into ~``--chunk-tokens`` chunks by ``chunk_text`` and wrapped in WRAP's ``easy`` prompt with the
packaged SmolLM2-135M-Instruct chat template. Every configuration decodes greedily with the same
``max_new_tokens`` on the same prompts in one process:

- ``plain generate loop``: one ``model.generate`` per prompt (``apply_chat_template(..., return_tensors="pt")``),
  what a script without batching does;
- ``backend batch B``: ``TransformersBackend.generate`` (length-sorted, left-padded batches of B);
- ``rephrase operator batch B``: the whole operator on a pyarrow batch of the same chunks as documents
  (chunking, chat template, generation, checks, rejoining, new rows).

Generated tokens are counted up to each completion's end-of-turn token (padding and the steps a
finished row idles in its batch are not counted), so tokens/s is useful output per second. Greedy
outputs are compared with the plain loop's (identical text = same tokens up to numerical noise of
padded batches). The load average is recorded with every measurement: the machine is shared.
torch runs ``--threads`` intra-op threads (default 1, what a Ray actor with ``num_cpus=1`` gets: Ray sets
``OMP_NUM_THREADS`` to the actor's CPUs); on a shared 2-core machine 2 threads collapse when another
process holds a core (measured: ~20× slower batched generation), 1 thread does not.

Run:
    .venv/bin/python -m benchmarks.bench_rephrase                 # 16 prompts, 64 new tokens, batch 1/4/8: ~3-6 min
    .venv/bin/python -m benchmarks.bench_rephrase --quick         # 8 prompts, 32 new tokens
Writes benchmarks/results/bench_rephrase-<UTC time>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "packaged:smollm2-135m"


def prompts_text(n: int, chunk_tokens: int, tok) -> list[str]:
    """``n`` chunks of real prose from the Python language reference, ~``chunk_tokens`` tokens each."""
    from pydoc_data.topics import topics

    from operators.rephrase.prompts import chunk_text

    out: list[str] = []
    for name in sorted(topics):
        paras = [p for p in topics[name].split("\n\n") if len(p.split()) > 30 and not p.startswith(" ")]
        for para in paras:
            chunks = chunk_text(" ".join(para.split()), tok, chunk_tokens)
            if chunks and chunks[0].n_tokens >= chunk_tokens // 2:
                out.append(chunks[0].text)
                break
        if len(out) == n:
            return out
    raise RuntimeError(f"found only {len(out)} prompts")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def plain_loop(model, tok, messages: list, new_tokens: int, stop_ids: list[int]) -> tuple[list[str], int]:
    """One ``model.generate`` per prompt; returns (texts, generated tokens up to the end-of-turn token)."""
    import torch

    texts, total = [], 0
    for msgs in messages:
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        row = out[0, ids["input_ids"].shape[1] :].tolist()
        end = next((k for k, t in enumerate(row) if t in stop_ids), len(row))
        texts.append(tok.decode(row[:end], skip_special_tokens=True))
        total += end
    return texts, total


def measure(name: str, fn) -> dict:
    load_before = _load()
    t0 = time.perf_counter()
    texts, tokens = fn()
    seconds = time.perf_counter() - t0
    row = {
        "name": name,
        "seconds": round(seconds, 2),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "load_before": load_before,
        "load_after": _load(),
    }
    print(f"  {name}: {tokens} tokens in {seconds:.1f}s = {tokens / seconds:.1f} tokens/s (load {load_before[0]})")
    return {**row, "texts": texts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--chunk-tokens", type=int, default=96)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="8 prompts, 32 new tokens")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.new_tokens = 8, 32
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    import pyarrow as pa
    import torch

    from operators.rephrase.backends import Request, Sampling, TransformersBackend
    from operators.rephrase.op import Rephrase
    from operators.rephrase.prompts import STYLES
    from storage.schema import READ_SCHEMA

    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = Sampling(temperature=0, max_new_tokens=args.new_tokens)
    backend = TransformersBackend(MODEL, sampling, batch_size=1)
    model, tok = backend.model, backend.tok
    chunks = prompts_text(args.prompts, args.chunk_tokens, tok)
    messages = [list(STYLES["easy"].messages(c)) for c in chunks]
    requests = [Request(f"p{i}", tuple(m), 0) for i, m in enumerate(messages)]
    prompt_tokens = [len(backend.encode(r)) for r in requests]
    print(f"{len(chunks)} prompts, {sum(prompt_tokens)} prompt tokens, max_new_tokens {args.new_tokens}")
    backend.generate(requests[:1])  # warm-up

    rows = [measure("plain generate loop", lambda: plain_loop(model, tok, messages, args.new_tokens, backend.stop_ids))]
    for b in sizes:
        backend.batch_size = b

        def run_backend():
            res = backend.generate(requests)
            return [r.text for r in res], sum(r.n_tokens for r in res)

        rows.append(measure(f"backend batch {b}", run_backend))

    op = Rephrase(
        stage="rephrase",
        styles=["easy"],
        temperature=0,
        max_new_tokens=args.new_tokens,
        chunk_tokens=args.chunk_tokens * 2,  # each document stays one chunk
        batch_size=max(sizes),
        allow_truncated=True,
    )
    n = len(chunks)
    cols = {f.name: [None] * n for f in READ_SCHEMA}
    cols.update(id=[f"p{i:03d}" for i in range(n)], text=chunks, domain=["ref"] * n, source=["pydoc"] * n)
    batch = pa.table(cols, schema=READ_SCHEMA)

    def run_operator():
        out = op(batch)
        tokens = op.drain_metrics()["transformers"]["tokens_generated"]
        return [r["text"] for r in out.to_pylist()[n:]], tokens

    rows.append(measure(f"rephrase operator batch {max(sizes)}", run_operator))

    base = rows[0]
    for r in rows:
        same = sum(a.strip() == b.strip() for a, b in zip(r["texts"], base["texts"]))
        r["same_text_as_plain_loop"] = f"{same}/{len(base['texts'])}"
        r["speedup_vs_plain_loop"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
    result = {
        "benchmark": "bench_rephrase",
        "time": datetime.now(timezone.utc).isoformat(),
        "model": MODEL,
        "prompts": len(chunks),
        "prompt_tokens": sum(prompt_tokens),
        "max_new_tokens": args.new_tokens,
        "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "packages": {p: metadata.version(p) for p in ("torch", "transformers")},
        "rows": [{k: v for k, v in r.items() if k != "texts"} for r in rows],
        "sample_output": rows[-1]["texts"][0][:300],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_rephrase-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{path}\n")
    print("| configuration | generated tokens | seconds | tokens/s | vs plain loop | same text as plain loop | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(
            f"| {r['name']} | {r['generated_tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
            f"{r['speedup_vs_plain_loop']}× | {r['same_text_as_plain_loop']} | {r['load_before'][0]} |"
        )


if __name__ == "__main__":
    main()
